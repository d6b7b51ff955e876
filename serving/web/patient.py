"""The patient's pages: their consultations, the chat (answers streamed as the model writes them, with
pictures or DICOM attached), thumbs up/down on answers, and their signed reads.

Every record goes through the records' access policy (serving.turns.records_for): another patient's
consultation or picture answers 404, and the attempt is audited there."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from memory.records import Records
from memory.schema import AuthorRole, Consultation, Role
from memory.users import Principal
from serving.api.deps import Services
from serving.api.routes import consultations as consultation_routes
from serving.problems import Problem
from serving.turns import open_consultation, records_for
from serving.web.render import WEB_PREFIX, page
from serving.web.session import check_csrf_header, checked_form, page_role
from tools.triage.levels import ADVICE

router = APIRouter(prefix=WEB_PREFIX + "/patient", include_in_schema=False)
PatientUser = Annotated[Principal, Depends(page_role(Role.patient))]


def _consultation_id(value: str) -> str:
    if not consultation_routes.THREAD_ID.match(value):
        raise Problem(404, "not found")
    return value


@router.get("")
def consultations(request: Request, me: PatientUser, services: Services) -> Response:
    with records_for(services, me) as records:
        own = records.patient_of_user(me.user_id)
        rows: list[Consultation] = consultation_routes.consultations_of(records, me, None)
        listed = [
            {"id": c.id, "created_at": c.created_at, "flag": c.flag, "closed": c.status.value != "open"}
            for c in rows
        ]
    return page(
        request, "patient/consultations.html", me=me, consultations=listed, has_record=own is not None
    )


@router.post("/consultations")
async def new_consultation(request: Request, me: PatientUser, services: Services) -> Response:
    await checked_form(request)
    consultation_id = await run_in_threadpool(open_consultation, services, me, None)
    return RedirectResponse(f"{WEB_PREFIX}/patient/consultations/{consultation_id}", status_code=303)


def message_view(message: Any) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": message.author_role,
        "content": message.content,
        "attachments": list(message.attachments or []),
        "provenance": message.provenance,
        "model_answer": message.author_role == AuthorRole.assistant and bool(message.provenance),
    }


@router.get("/consultations/{consultation_id}")
def chat(request: Request, consultation_id: str, me: PatientUser, services: Services) -> Response:
    consultation_id = _consultation_id(consultation_id)
    with records_for(services, me) as records:
        consultation = records.get_consultation(consultation_id)
        messages = [message_view(m) for m in records.list_messages(consultation_id)]
        flagged, is_open = consultation.flag, consultation.status.value == "open"
    return page(
        request,
        "patient/chat.html",
        me=me,
        consultation_id=consultation_id,
        messages=messages,
        flagged=flagged,
        is_open=is_open,
        advice=ADVICE,
    )


@router.post("/consultations/{consultation_id}/messages")
async def send(request: Request, consultation_id: str, me: PatientUser, services: Services) -> Response:
    """The page's script posts here (multipart, ``Accept: text/event-stream``): the very route the API
    serves, called with the signed-in patient, once the CSRF header checks out."""
    check_csrf_header(request)
    return await consultation_routes.post_message(_consultation_id(consultation_id), request, me, services)


@router.get("/consultations/{consultation_id}/attachments/{key}")
def attachment(consultation_id: str, key: str, me: PatientUser, services: Services) -> Response:
    """A picture of this consultation: only a key one of its messages holds (so the policy on the
    consultation is the policy on its pictures)."""
    consultation_id = _consultation_id(consultation_id)
    with records_for(services, me) as records:
        held = {k for m in records.list_messages(consultation_id) for k in (m.attachments or [])}
    return picture_response(services, key, held)


def picture_response(services: Any, key: str, allowed: set[str]) -> Response:
    from memory.pixels import PixelStoreError

    if key not in allowed:
        raise Problem(404, "not found")
    try:
        data = services.pixels.get(key)
    except PixelStoreError as exc:
        raise Problem(404, "not found") from exc
    return Response(data, media_type=_media_type(data))


def _media_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"


class Thumb(BaseModel):
    message_id: int
    up: bool


@router.post("/feedback", status_code=201)
def thumbs(body: Thumb, request: Request, me: PatientUser, services: Services) -> dict[str, Any]:
    """Thumbs up/down on one answer, kept as rating feedback on the adapter version that wrote it."""
    check_csrf_header(request)
    with records_for(services, me) as records:
        stored = records.add_feedback(
            "rating", {"thumbs": "up" if body.up else "down"}, message_id=body.message_id
        )
        return {"id": stored.id, "adapter_version": stored.adapter_version}


def signed_reads(records: Records, patient_id: int) -> list[dict[str, Any]]:
    """The patient's reads a physician signed (preliminary ones stay hidden, as in the API)."""
    out: list[dict[str, Any]] = []
    for study in records.list_studies(patient_id):
        for read in records.list_reads(study.id):
            signer = (read.provenance or {}).get("signed_by") or {}
            out.append(
                {
                    "id": read.id,
                    "study_id": study.id,
                    "modality": study.modality or "?",
                    "text": read.physician_final or "",
                    "status": read.status.value,
                    "signed_at": read.signed_at,
                    "signed_by": signer.get("name", ""),
                }
            )
    return out


@router.get("/reads")
def reads(request: Request, me: PatientUser, services: Services) -> Response:
    with records_for(services, me) as records:
        own = records.patient_of_user(me.user_id)
        listed = signed_reads(records, own.id) if own else []
    return page(request, "patient/reads.html", me=me, reads=listed)


@router.post("/preview")
async def preview(request: Request, me: PatientUser, services: Services) -> Response:
    """A DICOM file chosen for sending, rendered (middle slice, the file's own window) so the patient
    sees what they are about to send. Nothing is stored; the picture goes back to the same browser."""
    check_csrf_header(request)
    from serving.web.slices import preview_png

    limit = services.settings.max_upload_bytes
    form = await request.form(max_files=1, max_fields=2)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Problem(422, "file: choose a file to preview")
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise Problem(413, f"the file exceeds the limit of {limit} bytes")
    return Response(await run_in_threadpool(preview_png, data, limit), media_type="image/png")
