"""Rendering pages: one Jinja2 environment (autoescaped), the words of the request's language, and the
context every page shares (who is signed in, their CSRF token, the navigation)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from memory.audit import REQUEST_ID
from serving.auth import session_token
from serving.web.i18n import choose_language, translator

WEB_PREFIX = "/app"
STATIC_PREFIX = WEB_PREFIX + "/static"
HERE = Path(__file__).resolve().parent

_ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html", "svg"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else ""


_ENV.filters["when"] = _when


CSRF_KEY = b"healthagent web csrf"


def csrf_of(request: Request) -> str:
    """The CSRF token of the request's session ("" before sign-in): an HMAC of the session token."""
    token = session_token(request)
    if not token:
        return ""
    return hmac.new(token.encode(), CSRF_KEY, hashlib.sha256).hexdigest()


def page(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    language = choose_language(request)
    html = _ENV.get_template(template).render(
        request=request,
        path=request.url.path,
        lang=language,
        _=translator(language),
        csrf=csrf_of(request),
        static=STATIC_PREFIX,
        web=WEB_PREFIX,
        request_id=REQUEST_ID.get(),
        **context,
    )
    return HTMLResponse(html, status_code=status)
