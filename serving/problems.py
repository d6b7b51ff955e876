"""RFC 9457 problem+json answers for every error the API gives."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.engine import EngineClosed, EngineError, InvalidRequest, QueueFull, RequestTimedOut

PROBLEM_JSON = "application/problem+json"
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


def problem_response(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
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


def _engine_problem(exc: EngineError) -> JSONResponse:
    """The engine's refusals, whether raised here or re-raised from a replica through Ray."""
    if isinstance(exc, InvalidRequest):
        return problem_response(422, str(exc).splitlines()[0])
    if isinstance(exc, RequestTimedOut):
        return problem_response(504, "the model did not answer in time")
    retry = exc.retry_after_s
    if isinstance(exc, QueueFull | EngineClosed) or retry is not None:
        return problem_response(
            503, "the model is busy; retry shortly", headers={"Retry-After": str(max(1, round(retry or 5)))}
        )
    log.error("model error: %s", exc)
    return problem_response(502, "the model failed to answer; the incident was logged")


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        return problem_response(422, _describe(errors), errors=errors)

    @app.exception_handler(ValidationError)
    async def _validation(_request: Request, exc: ValidationError) -> JSONResponse:
        errors = validation_errors(exc.errors())
        return problem_response(422, _describe(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(EngineError)
    async def _engine(_request: Request, exc: EngineError) -> JSONResponse:
        return _engine_problem(exc)

    @app.exception_handler(RayActorError)
    async def _replica_died(_request: Request, exc: RayActorError) -> JSONResponse:
        log.error("model replica died during a request: %s", str(exc).splitlines()[0])
        return problem_response(
            503, "the model service restarted; retry shortly", headers={"Retry-After": "5"}
        )

    @app.exception_handler(BackPressureError)
    async def _back_pressure(_request: Request, exc: BackPressureError) -> JSONResponse:
        return problem_response(
            503, "the model service is at capacity; retry shortly", headers={"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never leak internals (or PHI in exception text) to the client; the log has the trace.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error; the incident was logged")
