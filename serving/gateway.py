"""The HTTP API (FastAPI). It authenticates, validates and limits; the agent does the rest."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from agents.graph import TurnContext
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
    answer: str
    disclaimer: str
    provenance: Provenance


def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    return principal_from_request(request, credentials)


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
        if image is not None:
            try:
                await run_in_threadpool(decode_image, image)
            except UnsupportedImage as exc:
                raise Problem(415, f"image: {exc}") from exc

        thread_id = payload.thread_id or uuid.uuid4().hex
        # Checkpoint threads are namespaced by user: one user's thread id never reaches another's.
        config = {"configurable": {"thread_id": f"user-{principal.user_id}:{thread_id}"}}
        state = await run_in_threadpool(
            services.graph.invoke,
            {"messages": [{"role": "user", "content": payload.message}]},
            config,
            context=TurnContext(image=image, max_new_tokens=settings.max_new_tokens),
        )
        return ChatResponse(
            thread_id=thread_id,
            answer=state["answer"],
            disclaimer=state["disclaimer"],
            provenance=Provenance.model_validate(state["provenance"]),
        )

    return app
