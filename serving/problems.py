"""RFC 9457 problem+json answers for every error the API gives.

Every answer carries a human ``detail`` and the ``request_id`` that the request's log lines and audit
rows carry too. Details are scrubbed of what only operators should see (terminal colour codes, Ray
actor, process and node ids, addresses, object reprs); the unscrubbed text goes to the log.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from http import HTTPStatus
from typing import Any

import psycopg
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from sqlalchemy import exc as sql_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory.audit import REQUEST_ID
from memory.cache import redis_unavailable
from memory.db import database_unavailable
from memory.records import AccessDenied, NotFound
from models.engine import EngineClosed, EngineError, InvalidRequest, QueueFull, RequestTimedOut

PROBLEM_JSON = "application/problem+json"
MAX_DETAIL_CHARS = 500
# Seconds a client should wait after a 503 for a store that is down: a restart takes a few seconds.
STORE_RETRY_AFTER_S = 2
log = logging.getLogger(__name__)


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


# What a message from deep inside (Ray's wrapped exceptions above all) may carry that a caller must not
# see. Ray prefixes a re-raised error with "ray::Deployment.method() (pid=…, ip=…, actor_id=…, repr=<…>)".
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_INTERNALS = [
    re.compile(r"ray::\S+(\s*\([^)]*\))?"),
    re.compile(r"^(?:[a-z_]\w*\.)+[A-Z]\w*: "),  # a module path's exception class before the message
    re.compile(r"\((?:[^()]*\b(?:pid|ip|actor_id|node_id|worker_id|task_id|repr)=[^()]*)\)"),
    re.compile(r"\b(?:pid|ip|actor_id|node_id|worker_id|task_id|job_id|repr)=\S+"),
    re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>"),
    re.compile(r"\b0x[0-9a-fA-F]{4,}\b"),
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"),
    re.compile(r"\[[0-9a-fA-F:.]+\](?::\d+)?"),  # bracketed IPv6, with or without a port
    re.compile(r"\b[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{1,4})*::(?:[0-9a-fA-F]{1,4}:?)*"),  # compressed IPv6
    re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"),  # full IPv6
    re.compile(r"\b[0-9a-f]{24,}\b"),  # actor / node / object ids
]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def public_text(text: str, fallback: str = "") -> str:
    """``text`` fit for a caller: its first line, with colour codes and internal identifiers removed."""
    lines = [line for line in _ANSI.sub("", str(text)).splitlines() if line.strip()]
    # The first line says what went wrong; where that was only a location (a traceback's header), the
    # last line holds the error itself.
    for line in lines[:1] + lines[-1:]:
        for pattern in _INTERNALS:
            line = pattern.sub("", line)
        line = re.sub(r"\s{2,}", " ", _CONTROL.sub("", line)).strip(" :;,")
        if line and not line.startswith("Traceback"):
            return line if len(line) <= MAX_DETAIL_CHARS else line[: MAX_DETAIL_CHARS - 1] + "…"
    return fallback


def problem_response(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    title = HTTPStatus(status).phrase
    public = public_text(detail, fallback=title)
    if public != detail:
        log.info("answered %s with internals removed from: %r", status, detail[:2000])
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": public}
    if errors:
        body["errors"] = [
            {"field": public_text(e.get("field", ""), "body"), "message": public_text(e.get("message", ""))}
            for e in errors
        ]
    request_id = REQUEST_ID.get()
    if request_id is not None:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def validation_errors(errors: list[dict[str, Any]], location: str = "body") -> list[dict[str, Any]]:
    """Pydantic errors as ``{"field": "message", "message": ...}``, the location prefix dropped."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part != location]
        out.append({"field": ".".join(loc) or location, "message": error.get("msg", "invalid")})
    return out


def _describe(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


def _cause(exc: BaseException) -> BaseException:
    """The original error of one that Ray re-raised (its text starts with Ray's own prefix)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _engine_problem(exc: EngineError) -> JSONResponse:
    """The engine's refusals, whether raised here or re-raised from a replica through Ray."""
    if isinstance(exc, InvalidRequest):
        return problem_response(422, public_text(str(_cause(exc)), "the model refused this request"))
    if isinstance(exc, RequestTimedOut):
        return problem_response(504, "the model did not answer in time")
    retry = exc.retry_after_s
    if isinstance(exc, QueueFull | EngineClosed) or retry is not None:
        return problem_response(
            503, "the model is busy; retry shortly", headers={"Retry-After": str(max(1, round(retry or 5)))}
        )
    log.error("model error: %s", exc)
    return problem_response(502, "the model failed to answer; the incident was logged")


def _store_unavailable(exc: BaseException) -> str | None:
    """ "database" or "session store" when ``exc``, or what it was raised from, says that store is down or
    restarting (nothing about the request was wrong); None otherwise."""
    seen: BaseException | None = exc
    for _ in range(5):  # a short chain: an error re-raised from the store's
        if seen is None:
            return None
        if database_unavailable(seen):
            return "database"
        if redis_unavailable(seen):
            return "session store"
        seen = seen.__cause__
    return None


def problem_for(exc: BaseException) -> JSONResponse:
    """The one answer for an exception raised while serving a request — by the API's handlers and by a
    streamed turn's final ``error`` event alike."""
    if isinstance(exc, Problem):
        if exc.status in (403, 404) and isinstance(exc.__cause__, AccessDenied | NotFound):
            # A record the caller may not see answers exactly like a missing one, status and words, whoever
            # asks: anything else would tell an outsider which ids exist. Denials are audited where they
            # happen (memory.records).
            return problem_response(404, "not found")
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        errors = validation_errors(list(exc.errors()))
        return problem_response(422, _describe(errors), errors=errors)
    if isinstance(exc, ValidationError):
        errors = validation_errors(exc.errors())
        return problem_response(422, _describe(errors), errors=errors)
    if isinstance(exc, StarletteHTTPException):
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)
    if isinstance(exc, EngineError):
        return _engine_problem(exc)
    if isinstance(exc, RayActorError):
        log.error("model replica died during a request: %s", str(exc).splitlines()[0])
        return problem_response(
            503, "the model service restarted; retry shortly", headers={"Retry-After": "5"}
        )
    if isinstance(exc, BackPressureError):
        return problem_response(
            503, "the model service is at capacity; retry shortly", headers={"Retry-After": "5"}
        )
    unavailable = _store_unavailable(exc)
    if unavailable is not None:
        log.warning("%s unavailable during a request: %s", unavailable, str(exc).splitlines()[0][:300])
        return problem_response(
            503,
            f"the {unavailable} is unavailable; retry shortly",
            headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
        )
    log.error("unhandled error", exc_info=exc)  # internals stay in the log
    return problem_response(500, "internal error; the incident was logged")


def install_problem_handlers(app: FastAPI) -> None:
    async def _handle(_request: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc)

    for kind in (
        Problem,
        RequestValidationError,
        ValidationError,
        StarletteHTTPException,
        EngineError,
        RayActorError,
        BackPressureError,
        # The stores' errors: a store that is down or restarting answers 503 (problem_for tells).
        sql_errors.DBAPIError,
        sql_errors.TimeoutError,
        psycopg.Error,
        sqlite3.Error,
        redis.RedisError,
        Exception,  # reached only without the observability middleware (it answers these itself)
    ):
        app.add_exception_handler(kind, _handle)
