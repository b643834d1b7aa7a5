"""Signing in to the console with an API token, and signing out."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from serve_app.console.auth import (
    COOKIE,
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_TTL_S,
    CsrfRefused,
    Viewer,
    check_csrf,
    cookie_options,
    new_login_token,
    sessions,
    viewer,
)
from serve_app.console.pages import render
from serve_app.context import AppContext, get_ctx
from serve_app.tokens import find_token

router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_TOKEN_CHARS = 500


def local_path(target: str | None) -> str:
    """Where to go after signing in: a console path of this site, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target \
            and not any(c.isspace() for c in target):
        return target
    return "/ui/"


def login_page(request: Request, ctx: AppContext, *, status: int = 200, error: str | None = None,
               next_path: str = "/ui/") -> HTMLResponse:
    """The sign-in form with a fresh CSRF token of its own (the browser has no session yet)."""
    token = new_login_token()
    response = render("login.html", status=status, viewer=None, flash=None, error=error, csrf=token,
                      next_path=local_path(next_path), configured=bool(ctx.tokens))
    response.set_cookie(LOGIN_COOKIE, token, **cookie_options(request, LOGIN_TTL_S))
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/ui/", ctx: AppContext = Depends(get_ctx)) -> HTMLResponse:
    return login_page(request, ctx, next_path=next)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, ctx: AppContext = Depends(get_ctx)) -> HTMLResponse:
    form = await request.form()
    presented, csrf, target = (form.get(name) for name in ("token", "csrf", "next"))
    expected = request.cookies.get(LOGIN_COOKIE) or ""
    if not expected or not isinstance(csrf, str) or not hmac.compare_digest(csrf.encode(), expected.encode()):
        raise CsrfRefused("the sign-in form expired or came from elsewhere; sign in again from this page")
    check_csrf(request, expected, csrf)  # and not from another site
    token = find_token(ctx.tokens, presented.strip()) if isinstance(presented, str) and \
        0 < len(presented) <= MAX_TOKEN_CHARS else None
    if token is None:
        return login_page(request, ctx, status=401, error="That token is not one of this platform's API tokens.",
                          next_path=target if isinstance(target, str) else "/ui/")
    session_id = await sessions(ctx).open(token)
    response = RedirectResponse(local_path(target if isinstance(target, str) else None), status_code=303)
    response.set_cookie(COOKIE, session_id, **cookie_options(request, int(ctx.settings.console_session_hours * 3600)))
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/logout")
async def logout(request: Request, who: Viewer = Depends(viewer), ctx: AppContext = Depends(get_ctx)) -> RedirectResponse:
    form = await request.form()
    csrf = form.get("csrf")
    check_csrf(request, who.csrf, csrf if isinstance(csrf, str) else None)
    await sessions(ctx).close(who)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=False)
    return response
