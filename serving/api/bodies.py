"""Turn and study bodies: JSON, or multipart with text fields and files, read within the size limits."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from serving.api.schemas import MAX_RECORD_ID, ChatRequest, MessageRequest, ProblemOut
from serving.problems import Problem
from serving.settings import Settings
from serving.turns import Upload
from tools.healthgpt import ImageTask

MAX_FILES = 4
# Room for the message and form framing on top of the largest accepted upload.
BODY_OVERHEAD_BYTES = 256 * 1024
_FILE_FIELDS = {"image", "files", "file"}

BodyT = TypeVar("BodyT", bound=BaseModel)


def max_body_bytes(settings: Settings) -> int:
    """The largest request body: every file at its limit, the longest message, and the framing."""
    return MAX_FILES * settings.max_upload_bytes + 4 * settings.max_message_chars + BODY_OVERHEAD_BYTES


async def read_body(request: Request, model: type[BodyT], max_file_bytes: int) -> tuple[BodyT, list[Upload]]:
    """JSON, or multipart with text fields and up to MAX_FILES files; anything else is a 415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        # Strict: in JSON an id is an integer, not true, 1.0 or "1" (form fields below are all text).
        return model.model_validate_json(await request.body(), strict=True), []
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
                uploads.append(await _upload(key, value, max_file_bytes))
            elif isinstance(value, UploadFile):
                raise _field_problem(key, "must be a text field")
            else:
                fields[key] = value
        return model.model_validate(fields), uploads
    finally:
        await form.close()


async def _upload(key: str, value: UploadFile | str, max_file_bytes: int) -> Upload:
    if not isinstance(value, UploadFile):
        raise _field_problem(key, "must be a file part")
    # One byte past the limit tells "too large" without reading the rest.
    data = await value.read(max_file_bytes + 1)
    if len(data) > max_file_bytes:
        raise Problem(413, f"{value.filename or key} exceeds the limit of {max_file_bytes} bytes")
    return Upload(name=_file_name(value.filename) or key, data=data)


def _file_name(name: str | None) -> str:
    """The client's file name as a label only: printable, storable, and short."""
    if not name:
        return ""
    cleaned = "".join(c for c in name if c.isprintable())  # drops controls and lone surrogates
    return cleaned.replace("/", "_").replace("\\", "_")[-200:]


def _field_problem(key: str, message: str) -> Problem:
    return Problem(422, f"{key}: {message}", errors=[{"field": key, "message": message}])


def check_message(settings: Settings, message: str) -> None:
    if not message.strip():  # nothing to answer, screen or store
        detail = "message: only whitespace; write something to send"
        raise Problem(422, detail, errors=[{"field": "message", "message": detail}])
    limit = settings.max_message_chars
    if len(message) > limit:
        detail = f"message: longer than {limit} characters"
        raise Problem(422, detail, errors=[{"field": "message", "message": detail}])


# These routes read their body themselves (JSON or multipart), so OpenAPI is told what they accept.
def _form(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": fields}


def _json_or_form(json_schema: str, form: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_schema}"}},
                "multipart/form-data": {"schema": form},
            },
        }
    }


_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
_ID = {"type": "integer", "minimum": 1, "maximum": MAX_RECORD_ID}
CHAT_BODY = _json_or_form(
    "ChatRequest",
    _form({"message": {"type": "string"}, "thread_id": {"type": "string"}, "image": _FILES}, ["message"]),
)
MESSAGE_BODY = _json_or_form(
    "MessageRequest",
    _form(
        {
            "message": {"type": "string"},
            "request": {"type": "string", "enum": ["message", "image_task"]},
            "image_task": {"type": "string", "enum": [t.value for t in ImageTask]},
            "study_id": _ID,
            "files": _FILES,
        },
        ["message"],
    ),
)
STUDY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _form(
                    {"file": {"type": "string", "format": "binary"}, "patient_id": _ID},
                    ["file"],
                )
            }
        },
    }
}


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemOut"}}}


def document_bodies(app: FastAPI) -> None:
    """Put the JSON bodies that routes read themselves into the OpenAPI components (the request bodies
    above refer to them, and FastAPI only lists the models it parses), and document every error answer
    as what it is: problem+json (FastAPI would say application/json with its own validation schema)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (ChatRequest, MessageRequest, ProblemOut):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    for code, response in operation.get("responses", {}).items():
                        if not code.startswith("2"):
                            response["content"] = dict(_PROBLEM)
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
