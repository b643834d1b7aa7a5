"""Console sign-in: an API token turned into a session cookie, and CSRF tokens for its forms.

A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure when the page came over
TLS), expiring after FIXFLEET_CONSOLE_SESSION_HOURS. Redis keeps what the id stands for, under
a hash of the id (reading Redis gives no cookie): the token's name, a keyed fingerprint of the
token's value (never the value), the session's CSRF token. Every request checks that a token of
that name and value is still configured, and takes its scopes as they are now: removing or
changing the token ends its sessions; signing out deletes the session.

Every state-changing form carries the session's CSRF token; a POST without it, with another, or
that the browser says came from another site, is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import Depends, Request
from redis.asyncio import Redis

from fixfleet.approvals import Principal
from serve_app.context import AppContext, get_ctx
from serve_app.tokens import ApiToken

COOKIE = "fixfleet_console"
LOGIN_COOKIE = "fixfleet_console_signin"  # the sign-in form's own CSRF token (there is no session yet)
COOKIE_PATH = "/ui"
SESSION_KEY = "fixfleet:console:session:"
FLASH_KEY = "fixfleet:console:flash:"
FLASH_TTL_S = 120
LOGIN_TTL_S = 3600


class SignInRequired(Exception):
    """No valid session: the page asks to sign in."""


class CsrfRefused(Exception):
    """A state-changing request without this session's CSRF token, or from another site."""


@dataclass(frozen=True)
class Viewer:
    """Who is signed in: a token's name, its scopes now, and the session's CSRF token."""

    name: str
    scopes: frozenset[str]
    csrf: str
    key: str  # the session's Redis key

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def principal(self) -> Principal:
        """The same principal as the task API's for this token: the same checks and audit rows."""
        return Principal(kind="api", name=self.name, scopes=self.scopes)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _fingerprint(salt: str, token: ApiToken) -> str:
    return hmac.new(salt.encode(), token.token.get_secret_value().encode(), hashlib.sha256).hexdigest()


class ConsoleSessions:
    def __init__(self, redis: Redis, tokens: list[ApiToken], ttl_s: float) -> None:
        self.redis, self.tokens, self.ttl_s = redis, tokens, int(ttl_s)

    async def open(self, token: ApiToken) -> str:
        """A new session for `token`; returns the cookie's value."""
        session_id = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        record = {"name": token.name, "salt": salt, "fingerprint": _fingerprint(salt, token),
                  "csrf": secrets.token_urlsafe(32), "created": time.time()}
        await self.redis.set(SESSION_KEY + _digest(session_id), json.dumps(record), ex=self.ttl_s)
        return session_id

    async def find(self, session_id: str | None) -> Viewer | None:
        if not session_id or len(session_id) > 100:
            return None
        key = SESSION_KEY + _digest(session_id)
        raw = await self.redis.get(key)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            name, salt, fingerprint, csrf = record["name"], record["salt"], record["fingerprint"], record["csrf"]
        except (ValueError, KeyError, TypeError):
            await self.redis.delete(key)
            return None
        token = self._token(name, salt, fingerprint)
        if token is None:  # the token was removed or replaced: its sessions end
            await self.redis.delete(key)
            return None
        return Viewer(name=token.name, scopes=frozenset(token.scopes), csrf=csrf, key=key)

    def _token(self, name: str, salt: str, fingerprint: str) -> ApiToken | None:
        found = None
        for token in self.tokens:  # every one compared: timing tells nothing
            if hmac.compare_digest(_fingerprint(salt, token), fingerprint) and token.name == name:
                found = token
        return found

    async def close(self, viewer: Viewer) -> None:
        await self.redis.delete(viewer.key, FLASH_KEY + viewer.key)

    async def flash(self, viewer: Viewer, kind: str, text: str) -> None:
        """A line shown on the next page this session sees (the outcome of a form)."""
        await self.redis.set(FLASH_KEY + viewer.key, json.dumps({"kind": kind, "text": text[:4000]}), ex=FLASH_TTL_S)

    async def take_flash(self, viewer: Viewer) -> dict[str, str] | None:
        raw = await self.redis.getdel(FLASH_KEY + viewer.key)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None


def sessions(ctx: AppContext) -> ConsoleSessions:
    return ConsoleSessions(ctx.services.redis, ctx.tokens, ctx.settings.console_session_hours * 3600)


async def viewer(request: Request, ctx: AppContext = Depends(get_ctx)) -> Viewer:
    """The signed-in viewer, or SignInRequired (answered with the sign-in page)."""
    found = await sessions(ctx).find(request.cookies.get(COOKIE))
    if found is None:
        raise SignInRequired()
    return found


def check_csrf(request: Request, expected: str, presented: str | None) -> None:
    """Raise CsrfRefused unless `presented` is the expected token and the browser does not say
    the request came from another site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise CsrfRefused("this form was sent from another site")
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise CsrfRefused("this form has no valid CSRF token; reload the page and try again")


def over_tls(request: Request) -> bool:
    """Served over TLS, here or at a proxy in front (which says so in X-Forwarded-Proto)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def cookie_options(request: Request, max_age: int) -> dict:
    return {"max_age": max_age, "path": COOKIE_PATH, "httponly": True, "samesite": "strict",
            "secure": over_tls(request)}


def new_login_token() -> str:
    return secrets.token_urlsafe(24)
