"""What the four clients share: typed errors and a base client over `http.request()`.

Every error is a subclass of `http.IntegrationError` (a caller that catches IntegrationError, as the
ingress does, keeps working) and is free of credentials: `typed(exc, secrets)` picks the most
specific class by status and scrubs every secret the client holds from the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypedDict

import httpx
from pydantic import SecretStr

from fixfleet.integrations.http import IntegrationError, request
from fixfleet.redact import Redactor


class AuthenticationError(IntegrationError):
    """401/403 (or Slack `invalid_auth` / `not_authed`): the credential is missing, wrong or lacks a scope."""


class NotFoundError(IntegrationError):
    """404: the thing does not exist or the credential may not see it."""


class RejectedError(IntegrationError):
    """400/409/422: the API understood the request and refused it (validation, conflict)."""


class RateLimitedError(IntegrationError):
    """429 that outlasted every retry."""


class UnavailableError(IntegrationError):
    """5xx that outlasted every retry, or no answer at all (transport error: `status` None)."""


class ResponseError(IntegrationError):
    """A 2xx whose body is not what the API promises (not JSON, a GraphQL `errors` list, ...)."""


_BY_STATUS: dict[int, type[IntegrationError]] = {
    400: RejectedError, 401: AuthenticationError, 403: AuthenticationError, 404: NotFoundError,
    409: RejectedError, 410: NotFoundError, 422: RejectedError, 429: RateLimitedError,
}


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    return Redactor(secrets).text(text)


def typed(exc: IntegrationError, secrets: Iterable[str | None] = ()) -> IntegrationError:
    """The most specific error for `exc`, its message free of `secrets`."""
    secrets = list(secrets)
    status = exc.status
    if type(exc) is not IntegrationError:  # already typed
        cls: type[IntegrationError] = type(exc)
    elif status is None or status >= 500:
        cls = UnavailableError
    else:
        cls = _BY_STATUS.get(status, IntegrationError)
    message = scrub(str(exc).removeprefix(f"{exc.service}: "), secrets)
    new = cls(exc.service, message, status)
    for name, value in vars(exc).items():  # keep extra attributes (SlackError.error, ...)
        if name not in ("service", "status"):
            setattr(new, name, value)
    return new


def secret_value(value: SecretStr | str | None) -> str | None:
    """The plain value of a credential given as SecretStr or str; None when empty."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value or None


class ClientOptions(TypedDict, total=False):
    """How a client retries and waits, and what it must never send; each client takes these as
    keywords (`**retry`)."""

    attempts: int  # default 4
    backoff_s: float  # default 0.5
    max_wait_s: float  # default 30
    timeout_s: float  # default 10, per request
    redactor: Redactor  # default: token shapes only


class ApiClient:
    """An httpx.AsyncClient whose every call goes through the retrying `request()` and raises
    typed, scrubbed errors. Subclasses set `service` and build the client."""

    service = "api"

    def __init__(
        self,
        *,
        base_url: str,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
        secrets: Iterable[str | None] = (),
        redactor: Redactor | None = None,
        attempts: int = 4,
        backoff_s: float = 0.5,
        max_wait_s: float = 30.0,
        timeout_s: float = 10.0,
        event_hooks: dict[str, list[Any]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers or {}, auth=auth, timeout=timeout_s, event_hooks=event_hooks
        )
        self._secrets = [s for s in secrets if s]
        # What this client sends (comments, PR bodies, messages) passes the platform's redactor.
        self.redactor = redactor or Redactor()
        self.retry = {"attempts": attempts, "backoff_s": backoff_s, "max_wait_s": max_wait_s}

    def __repr__(self) -> str:  # never the credentials
        return f"{type(self).__name__}({self.base_url!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if "json" in kwargs:
            kwargs["json"] = self.redactor.value(kwargs["json"])
        try:
            return await request(self.http, self.service, method, url, **self.retry, **kwargs)
        except IntegrationError as exc:
            error, cause = typed(exc, self._secrets), _transport_cause(exc)
        # Raised outside the except block and `from` the transport error only, so the original
        # (unscrubbed) error is neither the cause nor the context of the one callers see.
        raise error from cause

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ResponseError(
                self.service,
                f"{response.request.method} {response.request.url.path} -> {response.status_code}: not JSON",
                response.status_code,
            ) from None


def _transport_cause(exc: IntegrationError) -> BaseException | None:
    cause = exc.__cause__
    return cause if isinstance(cause, httpx.TransportError) else None
