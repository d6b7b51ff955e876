"""The web application for patients, physicians and admins, served by the gateway's own FastAPI app.

Server-rendered pages (Jinja2) under ``/app``, with small scripts of our own under ``/app/static`` (no
CDN, no build step). The pages call the same service functions as the JSON API (serving.turns, the
records with their access policy and audit, the fine-tune service), authenticated by a session cookie
through serving.auth. One module per role: patient.py, physician.py, admin.py.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from serving.web import admin, patient, physician, session
from serving.web.render import HERE, STATIC_PREFIX, WEB_PREFIX, page

__all__ = ["WEB_PATHS", "mount_web"]

# Paths whose answers are pages (their security headers allow their own scripts and styles).
WEB_PATHS = (WEB_PREFIX,)


def mount_web(app: FastAPI) -> None:
    """Add the pages, their assets, and HTML error pages for them (after the problem handlers)."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=HERE / "static"), name="web-static")
    for router in (session.router, patient.router, physician.router, admin.router):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse(WEB_PREFIX + "/", status_code=303)

    _html_problems(app)


def _wants_page(request: Request) -> bool:
    """A browser navigating to a page (not a script fetching JSON or an event stream)."""
    return request.url.path.startswith(WEB_PREFIX + "/") and "text/html" in request.headers.get("accept", "")


def _html_problems(app: FastAPI) -> None:
    """The API's problem answers, shown as a page to a browser on the pages: the same status and words
    (the problem's ``detail``), never a trace. Scripts on the pages still get problem+json."""
    for kind, handler in list(app.exception_handlers.items()):
        app.exception_handlers[kind] = _as_page(handler)
    app.exception_handlers[session.SignInRequired] = _to_sign_in


def _as_page(handler):
    async def handle(request: Request, exc: Exception) -> Response:
        answer = await handler(request, exc)
        if not _wants_page(request):
            return answer
        problem = json.loads(bytes(answer.body))
        shown = page(request, "problem.html", status=answer.status_code, problem=problem)
        for name in ("retry-after", "www-authenticate"):
            if name in answer.headers:
                shown.headers[name] = answer.headers[name]
        return shown

    return handle


async def _to_sign_in(request: Request, exc: Exception) -> Response:
    if not _wants_page(request):
        from serving.problems import problem_response

        return problem_response(401, "not signed in, or the session ended: sign in again")
    assert isinstance(exc, session.SignInRequired)
    return session.sign_in_redirect(exc.path)
