"""Browser sessions: signing in with an API token, the session cookie, CSRF tokens, signing out.

Signing in exchanges the API token once for a *session* token (memory.users, TokenKind.session): it
expires, is revocable server-side (signing out revokes it), and lives only in an HttpOnly,
SameSite=Strict cookie scoped to the pages, Secure when the request came over TLS. Every page request
authenticates that cookie through serving.auth (the same throttle, expiry, revocation and disabled-user
checks as a bearer token), then pays the same per-user rate limit. The JSON API never reads the cookie.

CSRF: each state-changing form carries a synchronizer token derived from the session token (an HMAC, so
the server keeps nothing more and a token is worthless once the session is revoked); scripts send it in
``X-CSRF-Token``. Before there is a session, the sign-in form uses a double-submit cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from memory import audit
from memory.db import transaction
from memory.schema import Role, TokenKind
from memory.users import Principal, add_token, revoke_token
from serving.api.deps import Services, charge_request
from serving.auth import SESSION_COOKIE, authenticate_token, principal_from_session, session_token
from serving.problems import Problem
from serving.web.i18n import LANG_COOKIE, LANGUAGES
from serving.web.render import CSRF_KEY, WEB_PREFIX, page

SESSION_LIFETIME = timedelta(hours=8)
SIGNIN_COOKIE = "ha_signin"  # the sign-in form's double-submit token
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
HOME = {Role.patient: "/patient", Role.physician: "/physician", Role.admin: "/admin"}

router = APIRouter(prefix=WEB_PREFIX, include_in_schema=False)


class SignInRequired(Exception):
    """A page was asked for without a live session: the browser goes to the sign-in form."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def is_https(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), CSRF_KEY, hashlib.sha256).hexdigest()


def check_csrf(request: Request, submitted: str | None) -> None:
    """403 unless ``submitted`` is the CSRF token of this request's session."""
    token = session_token(request)
    if not token or not submitted or not hmac.compare_digest(csrf_for(token), submitted):
        raise Problem(403, "the form's security token is missing or out of date; reload the page and retry")


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF field checks out."""
    form = await request.form()
    field = form.get(CSRF_FIELD)
    check_csrf(request, field if isinstance(field, str) else None)
    return form


def check_csrf_header(request: Request) -> None:
    check_csrf(request, request.headers.get(CSRF_HEADER))


def page_principal(request: Request, services: Services) -> Principal:
    """The signed-in user of a page, charged against their rate limit like an API call."""
    try:
        principal = principal_from_session(request)
    except Problem as exc:
        if exc.status == 401:
            raise SignInRequired(request.url.path) from exc
        raise
    return charge_request(services, principal)


Viewer = Annotated[Principal, Depends(page_principal)]


def page_role(role: Role):
    """A dependency: the signed-in user, if they have ``role``; 403 otherwise."""

    def with_role(principal: Viewer) -> Principal:
        if principal.role is not role:
            raise Problem(403, f"this page is for the {role} role")
        return principal

    return with_role


def safe_next(target: str | None, fallback: str) -> str:
    """Only a path of these pages: never another site (an open redirect)."""
    if target and target.startswith(WEB_PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return fallback


def home_of(principal: Principal) -> str:
    return WEB_PREFIX + HOME[principal.role]


@router.get("/sign-in")
def sign_in_form(request: Request, next: str | None = None, out: int = 0) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = page(request, "signin.html", signin_csrf=nonce, next=safe_next(next, ""), signed_out=bool(out))
    _set_cookie(request, response, SIGNIN_COOKIE, nonce, max_age=3600)
    return response


@router.post("/sign-in")
async def sign_in(request: Request, services: Services) -> Response:
    form = await request.form()
    nonce, submitted = request.cookies.get(SIGNIN_COOKIE), form.get(CSRF_FIELD)
    if not nonce or not isinstance(submitted, str) or not hmac.compare_digest(nonce, submitted):
        raise Problem(403, "the sign-in form's security token is missing or out of date; reload the page")
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    try:
        principal = authenticate_token(request, token)
    except Problem as exc:
        if exc.status != 401:
            raise
        again = page(request, "signin.html", signin_csrf=nonce, next=form.get("next") or "", failed=True)
        again.status_code = 401
        return again
    with transaction(services.sessions) as session:
        _, issued = add_token(
            session,
            principal.user_id,
            label="web sign-in",
            kind=TokenKind.session,
            expires_in=SESSION_LIFETIME,
        )
        audit.append(session, actor=principal, action="session.sign_in", resource="session")
    next_field = form.get("next")
    target = safe_next(next_field if isinstance(next_field, str) else None, home_of(principal))
    response = RedirectResponse(target, status_code=303)
    _set_cookie(request, response, SESSION_COOKIE, issued, max_age=int(SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(SIGNIN_COOKIE, path=WEB_PREFIX)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, services: Services, principal: Viewer) -> Response:
    await checked_form(request)
    token = session_token(request)
    with transaction(services.sessions) as session:
        if token is not None and revoke_token(session, token):
            audit.append(session, actor=principal, action="session.sign_out", resource="session")
    response = RedirectResponse(f"{WEB_PREFIX}/sign-in?out=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=WEB_PREFIX, secure=is_https(request), httponly=True,
                           samesite="strict")  # fmt: skip
    return response


@router.get("/lang/{language}")
def set_language(request: Request, language: str, next: str | None = None) -> Response:
    """The language toggle: a preference, not a state change of any record (so a plain link)."""
    response = RedirectResponse(safe_next(next, WEB_PREFIX + "/"), status_code=303)
    if language in LANGUAGES:
        _set_cookie(request, response, LANG_COOKIE, language, max_age=365 * 86400, http_only=False)
    return response


@router.get("/")
def start(principal: Viewer) -> Response:
    return RedirectResponse(home_of(principal), status_code=303)


def _set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int, http_only: bool = True
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=WEB_PREFIX,
        secure=is_https(request),
        httponly=http_only,
        samesite="strict",
    )


def sign_in_redirect(path: str) -> Response:
    return RedirectResponse(f"{WEB_PREFIX}/sign-in?next={quote(path, safe='/')}", status_code=303)
