"""The HTTP API (FastAPI). It authenticates, validates and limits; the agent does the rest."""

from __future__ import annotations

import io
import math
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from agents.graph import TurnContext
from memory.db import transaction
from memory.records import AccessDenied, InvalidInput, NotFound, Records
from memory.schema import Role
from memory.users import Principal
from serving.auth import bearer_scheme, principal_from_request
from serving.limits import BodySizeLimit
from serving.problems import Problem, install_problem_handlers, problem_response
from serving.services import GatewayServices
from tools.healthgpt import Provenance
from tools.images import UnsupportedImage, decode_image

THREAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Room for the message and form framing on top of the largest accepted image.
BODY_OVERHEAD_BYTES = 256 * 1024


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, description="What the user says.")
    thread_id: str | None = Field(
        default=None,
        pattern=THREAD_ID.pattern,
        description="Continue this consultation; omit to start a new one.",
    )


class ChatResponse(BaseModel):
    thread_id: str
    message_id: int = Field(description="The stored answer; send feedback about it to /v1/feedback.")
    answer: str
    disclaimer: str
    provenance: Provenance


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: int = Field(description="The answer the feedback is about (ChatResponse.message_id).")
    kind: Literal["rating", "correction", "preference"]
    payload: dict[str, Any] = Field(default_factory=dict, description="e.g. {'stars': 4} or {'text': ...}")


class FeedbackResponse(BaseModel):
    id: int
    adapter_version: str


@contextmanager
def _records(services: GatewayServices, principal: Principal) -> Iterator[Records]:
    """A transaction with the caller's view of the records; domain errors become problem answers."""
    try:
        with transaction(services.sessions) as session:
            yield Records(session, principal, admin_phi_access=services.settings.admin_phi_access)
    except NotFound as exc:
        raise Problem(404, str(exc)) from exc
    except AccessDenied as exc:
        raise Problem(403, str(exc)) from exc
    except InvalidInput as exc:
        raise Problem(422, str(exc)) from exc


def _record_user_turn(
    services: GatewayServices,
    principal: Principal,
    thread_id: str | None,
    text: str,
    attachments: list[str],
) -> str:
    with _records(services, principal) as records:
        if thread_id is None:
            thread_id = uuid.uuid4().hex
            patient = records.patient_of_user(principal.user_id) if principal.role is Role.patient else None
            if principal.role is Role.patient and patient is None:
                raise InvalidInput("this patient login has no patient record; ask an administrator")
            records.open_consultation(thread_id, patient.id if patient else None)
        else:
            records.get_consultation(thread_id)
        records.add_message(thread_id, str(principal.role), text, attachments=attachments)
    return thread_id


def _record_answer(
    services: GatewayServices, principal: Principal, thread_id: str, answer: str, provenance: dict
) -> int:
    with _records(services, principal) as records:
        return records.add_message(thread_id, "assistant", answer, provenance=provenance).id


def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The authenticated caller, charged one request against their rate limit."""
    principal = principal_from_request(request, credentials)
    services: GatewayServices = request.app.state.services
    decision = services.backends.rate_limiter.acquire(f"user:{principal.user_id}")
    if not decision.allowed:
        retry_after = max(1, math.ceil(decision.retry_after_s))
        raise Problem(
            429,
            f"rate limit exceeded ({services.settings.rate_limit.per_minute:g} requests per minute, bursts "
            f"of {services.settings.rate_limit.burst}); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    return principal


def _store_image(services: GatewayServices, data: bytes) -> str:
    """Decode the upload and keep only its pixels (re-encoded as PNG: EXIF and other metadata gone)."""
    try:
        image = decode_image(data)
    except UnsupportedImage as exc:
        raise Problem(415, f"image: {exc}") from exc
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return services.pixels.put(buffer.getvalue())


_CHAT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "thread_id": {"type": "string"},
                        "image": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}


async def _parse_multipart(request: Request, max_image_bytes: int) -> tuple[ChatRequest, bytes | None]:
    form = await request.form(max_files=1, max_fields=8)
    try:
        fields: dict[str, Any] = {}
        image: bytes | None = None
        for key, value in form.multi_items():
            if key == "image":
                if not isinstance(value, UploadFile):
                    raise Problem(
                        422,
                        "image: must be a file part",
                        errors=[{"field": "image", "message": "must be a file part"}],
                    )
                image = await value.read(max_image_bytes + 1)
                if len(image) > max_image_bytes:
                    raise Problem(413, f"image exceeds the limit of {max_image_bytes} bytes")
            elif isinstance(value, UploadFile):
                raise Problem(
                    422,
                    f"{key}: must be a text field",
                    errors=[{"field": key, "message": "must be a text field"}],
                )
            else:
                fields[key] = value
        return ChatRequest.model_validate(fields), image
    finally:
        await form.close()


def create_app(services: GatewayServices) -> FastAPI:
    settings = services.settings
    app = FastAPI(
        title="Health Agent",
        version="0.1.0",
        description="Consultations, second reads and image tasks around HealthGPT. "
        "Every model output carries provenance; answers are not medical advice.",
    )
    app.state.services = services
    install_problem_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_upload_bytes + 4 * settings.max_message_chars + BODY_OVERHEAD_BYTES,
    )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """The model deployment answers and the database (and Redis, if configured) is reachable."""
        checks = await run_in_threadpool(services.readiness)
        failing = {k: v for k, v in checks.items() if v.startswith("error")}
        if failing:
            response = problem_response(503, "not ready: " + ", ".join(sorted(failing)))
            response.headers["Retry-After"] = "5"
            return response
        return JSONResponse({"status": "ready", "checks": checks})

    @app.post(
        "/v1/chat",
        tags=["chat"],
        response_model=ChatResponse,
        openapi_extra=_CHAT_BODY,
        responses={
            401: {"description": "missing or invalid token"},
            413: {"description": "body or image too large"},
            415: {"description": "unsupported content type or not an image"},
            422: {"description": "invalid fields"},
            429: {"description": "rate limit exceeded; see Retry-After"},
        },
    )
    async def chat(
        request: Request, principal: Annotated[Principal, Depends(current_principal)]
    ) -> ChatResponse:
        """Send a message (JSON), or a message with an image (multipart), and get the agent's answer."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        image: bytes | None = None
        if content_type == "application/json":
            payload = ChatRequest.model_validate_json(await request.body())
        elif content_type == "multipart/form-data":
            payload, image = await _parse_multipart(request, settings.max_upload_bytes)
        else:
            raise Problem(
                415,
                f"unsupported content type {content_type or '(none)'}: send application/json, "
                "or multipart/form-data with a 'message' field and an optional 'image' file",
            )
        if len(payload.message) > settings.max_message_chars:
            detail = f"message: longer than {settings.max_message_chars} characters"
            raise Problem(422, detail, errors=[{"field": "message", "message": detail}])
        attachments = [] if image is None else [await run_in_threadpool(_store_image, services, image)]

        # The consultation (= LangGraph thread) is opened or checked, and the user's message stored,
        # before the model runs: the access policy decides whether this thread is the caller's.
        thread_id = await run_in_threadpool(
            _record_user_turn, services, principal, payload.thread_id, payload.message, attachments
        )
        state = await run_in_threadpool(
            services.graph.invoke,
            {"messages": [{"role": "user", "content": payload.message}]},
            {"configurable": {"thread_id": thread_id}},
            context=TurnContext(image=image, max_new_tokens=settings.max_new_tokens),
        )
        provenance = Provenance.model_validate(state["provenance"])
        message_id = await run_in_threadpool(
            _record_answer, services, principal, thread_id, state["answer"], provenance.model_dump()
        )
        return ChatResponse(
            thread_id=thread_id,
            message_id=message_id,
            answer=state["answer"],
            disclaimer=state["disclaimer"],
            provenance=provenance,
        )

    @app.post(
        "/v1/feedback",
        tags=["feedback"],
        status_code=201,
        response_model=FeedbackResponse,
        responses={403: {"description": "not your record"}, 404: {"description": "no such message"}},
    )
    def feedback(
        body: FeedbackRequest, principal: Annotated[Principal, Depends(current_principal)]
    ) -> FeedbackResponse:
        """Rate, correct or state a preference about one answer; kept with the adapter version behind it."""
        with _records(services, principal) as records:
            stored = records.add_feedback(body.kind, body.payload, message_id=body.message_id)
            return FeedbackResponse(id=stored.id, adapter_version=stored.adapter_version)

    return app
