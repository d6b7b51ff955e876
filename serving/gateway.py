"""The HTTP API (FastAPI). It authenticates, validates and limits; the agent does the rest.

Resources: consultations (= LangGraph threads) and their messages, studies (de-identified DICOM),
reads (AI drafts a physician signs), feedback, admin summaries. Every error is problem+json; another
patient's record answers 404, as if it did not exist.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile

from memory.schema import Role
from memory.users import Principal
from serving.auth import bearer_scheme, principal_from_request
from serving.limits import BodySizeLimit
from serving.problems import Problem, install_problem_handlers, problem_response
from serving.services import GatewayServices
from serving.turns import (
    TurnInput,
    Upload,
    ingest_study,
    open_consultation,
    records_for,
    resume_review,
    run_turn,
    stream_turn,
)
from tools.healthgpt import ImageTask, Provenance

THREAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Room for the message and form framing on top of the largest accepted upload.
BODY_OVERHEAD_BYTES = 256 * 1024
MAX_FILES = 4
_FILE_FIELDS = {"image", "files", "file"}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, description="What the user says.")
    thread_id: str | None = Field(
        default=None, pattern=THREAD_ID.pattern, description="Continue this consultation; omit to start one."
    )


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, description="What the user says.")
    request: Literal["message", "image_task"] = Field(
        default="message", description="image_task: run the generation plugin on the attached image."
    )
    image_task: ImageTask | None = Field(default=None, description="Which image task (physicians).")
    study_id: int | None = Field(default=None, description="Ask about this study (its image goes along).")


class TurnResponse(BaseModel):
    consultation_id: str
    message_id: int | None = Field(description="The stored answer; send feedback about it to /v1/feedback.")
    status: Literal["answered", "awaiting_signoff"]
    answer: str
    disclaimer: str
    route: str | None
    escalated: bool
    triage: dict[str, Any] | None
    read_id: int | None = None
    provenance: Provenance | None = Field(
        description="The model behind the answer; null for rule-based answers."
    )
    tool_results: dict[str, Any] = Field(default_factory=dict)
    injection: list[str] = Field(
        default_factory=list, description="Steering attempts found in the message (recorded, no effect)."
    )


class ChatResponse(TurnResponse):
    thread_id: str


class ConsultationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patient_id: int | None = Field(default=None, description="Physicians: the patient; patients: omit.")


class ConsultationOut(BaseModel):
    id: str
    patient_id: int | None
    status: str
    flag: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)


class StudyForm(BaseModel):
    patient_id: int | None = Field(default=None, description="Physicians: the patient; patients: omit.")


class StudyOut(BaseModel):
    id: int
    patient_id: int
    modality: str
    description: str
    metadata: dict[str, Any]


class ReadOut(BaseModel):
    id: int
    study_id: int
    status: str
    ai_draft: str
    physician_final: str | None
    provenance: dict[str, Any]
    consultation_id: str | None = None


class SignoffRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["sign", "correct"]
    text: str | None = Field(default=None, description="The corrected read (action=correct).")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: int | None = Field(default=None, description="An answer (TurnResponse.message_id).")
    read_id: int | None = Field(default=None, description="Or an AI read.")
    kind: Literal["rating", "correction", "preference"]
    payload: dict[str, Any] = Field(default_factory=dict, description="e.g. {'stars': 4} or {'text': ...}")


class FeedbackResponse(BaseModel):
    id: int
    adapter_version: str


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


Caller = Annotated[Principal, Depends(current_principal)]


def _require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        raise Problem(403, f"this needs the {' or '.join(str(r) for r in roles)} role")


def _multipart_doc(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": fields}


def _body_doc(json_schema: str, form: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_schema}"}},
                "multipart/form-data": {"schema": form},
            },
        }
    }


_FILES_DOC = {"type": "array", "items": {"type": "string", "format": "binary"}}
_CHAT_BODY = _body_doc(
    "ChatRequest",
    _multipart_doc(
        {"message": {"type": "string"}, "thread_id": {"type": "string"}, "image": _FILES_DOC}, ["message"]
    ),
)
_MESSAGE_BODY = _body_doc(
    "MessageRequest",
    _multipart_doc(
        {
            "message": {"type": "string"},
            "request": {"type": "string", "enum": ["message", "image_task"]},
            "image_task": {"type": "string", "enum": [t.value for t in ImageTask]},
            "study_id": {"type": "integer"},
            "files": _FILES_DOC,
        },
        ["message"],
    ),
)
_STUDY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _multipart_doc(
                    {"file": {"type": "string", "format": "binary"}, "patient_id": {"type": "integer"}},
                    ["file"],
                )
            }
        },
    }
}
_ERRORS = {
    401: {"description": "missing or invalid token"},
    403: {"description": "your role may not do this"},
    404: {"description": "no such record (or not yours)"},
    413: {"description": "body or file too large"},
    415: {"description": "unsupported content type or file"},
    422: {"description": "invalid fields"},
    429: {"description": "rate limit exceeded; see Retry-After"},
    503: {"description": "the model is busy or restarting; see Retry-After"},
}


async def _read_body(
    request: Request, model: type[BaseModel], max_file_bytes: int
) -> tuple[Any, list[Upload]]:
    """JSON, or multipart with text fields and up to MAX_FILES files; anything else is a 415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return model.model_validate_json(await request.body()), []
    if content_type != "multipart/form-data":
        raise Problem(
            415,
            f"unsupported content type {content_type or '(none)'}: send application/json, or "
            "multipart/form-data with a 'message' field and optional files",
        )
    form = await request.form(max_files=MAX_FILES, max_fields=16)
    try:
        fields: dict[str, Any] = {}
        uploads: list[Upload] = []
        for key, value in form.multi_items():
            if key in _FILE_FIELDS:
                if not isinstance(value, UploadFile):
                    raise Problem(
                        422,
                        f"{key}: must be a file part",
                        errors=[{"field": key, "message": "must be a file part"}],
                    )
                data = await value.read(max_file_bytes + 1)
                if len(data) > max_file_bytes:
                    raise Problem(413, f"{value.filename or key} exceeds the limit of {max_file_bytes} bytes")
                uploads.append(Upload(name=value.filename or key, data=data))
            elif isinstance(value, UploadFile):
                raise Problem(
                    422,
                    f"{key}: must be a text field",
                    errors=[{"field": key, "message": "must be a text field"}],
                )
            else:
                fields[key] = value
        return model.model_validate(fields), uploads
    finally:
        await form.close()


def _check_message(services: GatewayServices, message: str) -> None:
    limit = services.settings.max_message_chars
    if len(message) > limit:
        detail = f"message: longer than {limit} characters"
        raise Problem(422, detail, errors=[{"field": "message", "message": detail}])


def _sse(events: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    for event, data in events:
        yield f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def create_app(services: GatewayServices) -> FastAPI:
    settings = services.settings
    app = FastAPI(
        title="Health Agent",
        version="0.1.0",
        description="Consultations, second reads and image tasks around HealthGPT. "
        "Every model output carries provenance; AI reads stay preliminary until a physician signs; "
        "answers are not medical advice.",
    )
    app.state.services = services
    install_problem_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=MAX_FILES * settings.max_upload_bytes
        + 4 * settings.max_message_chars
        + BODY_OVERHEAD_BYTES,
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

    # -- consultations --------------------------------------------------------------------------------
    @app.post(
        "/v1/consultations",
        tags=["consultations"],
        status_code=201,
        response_model=ConsultationOut,
        responses=_ERRORS,
    )
    def create_consultation(body: ConsultationCreate, principal: Caller) -> ConsultationOut:
        """Open a consultation: a patient's own, a physician's about a patient in their care team, or an
        admin's (no patient data)."""
        if principal.role is Role.physician and body.patient_id is None:
            raise Problem(422, "patient_id: a physician's consultation is about a patient")
        if principal.role is Role.admin and body.patient_id is not None:
            raise Problem(403, "administrators do not open consultations about patients")
        consultation_id = open_consultation(services, principal, body.patient_id)
        return _consultation(principal, consultation_id, with_messages=False)

    def _consultation(principal: Principal, consultation_id: str, with_messages: bool) -> ConsultationOut:
        with records_for(services, principal) as records:
            row = records.get_consultation(consultation_id)
            messages = records.list_messages(consultation_id) if with_messages else []
            return ConsultationOut(
                id=row.id,
                patient_id=row.patient_id,
                status=row.status.value,
                flag=row.flag,
                messages=[
                    {
                        "id": m.id,
                        "author_role": m.author_role,
                        "content": m.content,
                        "attachments": m.attachments,
                        "provenance": m.provenance,
                        "created_at": m.created_at.isoformat(),
                    }
                    for m in messages
                ],
            )

    @app.get(
        "/v1/consultations/{consultation_id}",
        tags=["consultations"],
        response_model=ConsultationOut,
        responses=_ERRORS,
    )
    def get_consultation(consultation_id: str, principal: Caller) -> ConsultationOut:
        """A consultation with its messages (each answer with its provenance)."""
        return _consultation(principal, consultation_id, with_messages=True)

    @app.post(
        "/v1/consultations/{consultation_id}/messages",
        tags=["consultations"],
        response_model=TurnResponse,
        openapi_extra=_MESSAGE_BODY,
        responses={
            **_ERRORS,
            200: {"content": {"text/event-stream": {}}, "description": "the turn's outcome"},
        },
    )
    async def post_message(consultation_id: str, request: Request, principal: Caller):
        """Send a message (JSON, or multipart with pictures / DICOM files). With
        ``Accept: text/event-stream`` the answer streams: ``node`` events as the agent moves, ``token``
        events as the model writes, then ``done`` with the outcome."""
        if not THREAD_ID.match(consultation_id):
            raise Problem(404, "not found")
        body, uploads = await _read_body(request, MessageRequest, settings.max_upload_bytes)
        _check_message(services, body.message)
        turn = TurnInput(body.message, body.request, body.image_task, body.study_id, uploads)
        if "text/event-stream" in request.headers.get("accept", ""):
            events = await run_in_threadpool(lambda: stream_turn(services, principal, consultation_id, turn))
            return StreamingResponse(iterate_in_threadpool(_sse(events)), media_type="text/event-stream")
        return await run_in_threadpool(run_turn, services, principal, consultation_id, turn)

    @app.post(
        "/v1/chat",
        tags=["consultations"],
        response_model=ChatResponse,
        openapi_extra=_CHAT_BODY,
        responses=_ERRORS,
    )
    async def chat(request: Request, principal: Caller) -> ChatResponse:
        """Shortcut: send a message, opening a consultation when no ``thread_id`` is given."""
        body, uploads = await _read_body(request, ChatRequest, settings.max_upload_bytes)
        _check_message(services, body.message)
        thread_id = body.thread_id or await run_in_threadpool(open_consultation, services, principal, None)
        outcome = await run_in_threadpool(
            run_turn, services, principal, thread_id, TurnInput(body.message, uploads=uploads)
        )
        return ChatResponse(thread_id=thread_id, **outcome)

    # -- studies and reads ----------------------------------------------------------------------------
    @app.post(
        "/v1/studies",
        tags=["studies"],
        status_code=201,
        response_model=StudyOut,
        responses=_ERRORS,
        openapi_extra=_STUDY_BODY,
    )
    async def create_study(request: Request, principal: Caller) -> StudyOut:
        """Upload a DICOM file: it is de-identified (header; burned-in text per setting) before it is kept."""
        form, uploads = await _read_body(request, StudyForm, settings.max_upload_bytes)
        if len(uploads) != 1:
            raise Problem(422, "file: send exactly one DICOM file")
        patient_id = form.patient_id
        if principal.role is Role.patient:
            with records_for(services, principal) as records:
                own = records.patient_of_user(principal.user_id)
            if own is None or patient_id not in (None, own.id):
                raise Problem(404, "not found")
            patient_id = own.id
        elif patient_id is None:
            raise Problem(422, "patient_id: required")
        stored = await run_in_threadpool(ingest_study, services, principal, patient_id, uploads[0])
        with records_for(services, principal) as records:
            study = records.get_study(stored.id)
            return StudyOut(
                id=study.id,
                patient_id=study.patient_id,
                modality=study.modality,
                description=study.description,
                metadata=study.deidentified_metadata,
            )

    @app.post(
        "/v1/studies/{study_id}/reads",
        tags=["studies"],
        status_code=201,
        response_model=TurnResponse,
        responses=_ERRORS,
    )
    async def request_read(study_id: int, principal: Caller) -> dict[str, Any]:
        """A physician asks for an AI second read: it is drafted, stored as PRELIMINARY, and waits for
        sign-off (``POST /v1/reads/{id}/signoff``)."""
        _require(principal, Role.physician)
        with records_for(services, principal) as records:
            patient_id = records.get_study(study_id).patient_id
        consultation_id = await run_in_threadpool(open_consultation, services, principal, patient_id)
        turn = TurnInput(f"Second read of study {study_id}", request="second_read", study_id=study_id)
        return await run_in_threadpool(run_turn, services, principal, consultation_id, turn)

    @app.get("/v1/reads/{read_id}", tags=["studies"], response_model=ReadOut, responses=_ERRORS)
    def get_read(read_id: int, principal: Caller) -> ReadOut:
        """A read. Patients see their reads once a physician signed them."""
        with records_for(services, principal) as records:
            read = records.get_read(read_id)
            return ReadOut(
                id=read.id,
                study_id=read.study_id,
                status=read.status.value,
                ai_draft=read.ai_draft,
                physician_final=read.physician_final,
                provenance=read.provenance,
                consultation_id=(read.provenance or {}).get("consultation_id"),
            )

    @app.post("/v1/reads/{read_id}/signoff", tags=["studies"], response_model=TurnResponse, responses=_ERRORS)
    async def signoff(read_id: int, body: SignoffRequest, principal: Caller) -> dict[str, Any]:
        """Sign the AI draft as it is, or correct it (the correction is kept as feedback on the adapter)."""
        _require(principal, Role.physician)
        if body.action == "correct" and not (body.text or "").strip():
            raise Problem(422, "text: a correction needs the corrected read")
        return await run_in_threadpool(resume_review, services, principal, read_id, body.action, body.text)

    # -- feedback, notifications, admin -----------------------------------------------------------------
    @app.post(
        "/v1/feedback", tags=["feedback"], status_code=201, response_model=FeedbackResponse, responses=_ERRORS
    )
    def feedback(body: FeedbackRequest, principal: Caller) -> FeedbackResponse:
        """Rate, correct or state a preference about one answer or read; kept with its adapter version."""
        with records_for(services, principal) as records:
            stored = records.add_feedback(
                body.kind, body.payload, message_id=body.message_id, read_id=body.read_id
            )
            return FeedbackResponse(id=stored.id, adapter_version=stored.adapter_version)

    @app.get("/v1/notifications", tags=["feedback"], responses=_ERRORS)
    def notifications(principal: Caller) -> list[dict[str, Any]]:
        """Your notifications (physicians: red flags in your patients' consultations)."""
        with records_for(services, principal) as records:
            return [
                {
                    "id": n.id,
                    "kind": n.kind,
                    "text": n.text,
                    "consultation_id": n.consultation_id,
                    "created_at": n.created_at.isoformat(),
                }
                for n in records.my_notifications()
            ]

    @app.get("/v1/admin/feedback/summary", tags=["admin"], responses=_ERRORS)
    def feedback_summary(principal: Caller) -> list[dict[str, Any]]:
        """Feedback counts per plugin, adapter version and kind (no patient data)."""
        _require(principal, Role.admin)
        with records_for(services, principal) as records:
            return [a.__dict__ for a in records.feedback_aggregates()]

    @app.get("/v1/admin/adapters", tags=["admin"], responses=_ERRORS)
    def adapters(principal: Caller) -> dict[str, Any]:
        """Registered adapter versions, and what the model serves now."""
        _require(principal, Role.admin)
        with records_for(services, principal) as records:
            registered = [
                {
                    "id": a.id,
                    "plugin": a.plugin,
                    "version": a.version,
                    "status": a.status.value,
                    "metrics": a.metrics,
                }
                for a in records.list_adapters()
            ]
        serving = services.model.info()
        return {"registered": registered, "serving": serving.model_dump()}

    return app
