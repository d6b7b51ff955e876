"""Consultations (= LangGraph threads) and their messages, one agent turn per message."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from memory.records import Records
from memory.schema import Consultation, Role
from memory.users import Principal
from serving.api.bodies import MESSAGE_BODY, check_message, read_body
from serving.api.deps import Caller, RecordsSession, Services
from serving.api.schemas import (
    ERROR_RESPONSES,
    THREAD_ID_PATTERN,
    ConsultationCreate,
    ConsultationOut,
    ConsultationSummary,
    MessageOut,
    MessageRequest,
    TurnResponse,
)
from serving.observability import observe_stream, observe_turn
from serving.problems import Problem
from serving.turns import TurnInput, open_consultation, records_for, run_turn, stream_turn

router = APIRouter(prefix="/v1/consultations", tags=["consultations"], responses=ERROR_RESPONSES)
THREAD_ID = re.compile(THREAD_ID_PATTERN)


def consultation_out(records: Records, consultation_id: str, *, with_messages: bool) -> ConsultationOut:
    consultation = ConsultationOut.model_validate(records.get_consultation(consultation_id))
    if with_messages:
        consultation.messages = [MessageOut.model_validate(m) for m in records.list_messages(consultation_id)]
    return consultation


@router.post("", status_code=201, response_model=ConsultationOut)
def create_consultation(body: ConsultationCreate, principal: Caller, services: Services) -> ConsultationOut:
    """Open a consultation: a patient's own, a physician's about a patient in their care team, or an
    admin's (no patient data)."""
    if principal.role is Role.physician and body.patient_id is None:
        raise Problem(422, "patient_id: a physician's consultation is about a patient")
    if principal.role is Role.admin and body.patient_id is not None:
        raise Problem(403, "administrators do not open consultations about patients")
    consultation_id = open_consultation(services, principal, body.patient_id)
    with records_for(services, principal) as records:
        return consultation_out(records, consultation_id, with_messages=False)


def consultations_of(records: Records, principal: Principal, patient_id: int | None) -> list[Consultation]:
    """The consultations ``principal`` may list, newest first: a patient's own (``patient_id`` may only
    name their own record), or one patient's for a physician of their care team. Admins see no patient
    data (unless the ``admin_phi_access`` setting grants reading it). Every list is audited by the
    records, and a patient outside the caller's reach answers 404 like a missing one."""
    if principal.role is Role.admin and not records.admin_phi_access:
        raise Problem(403, "administrators see no patients' consultations")
    if principal.role is Role.patient and patient_id is None:
        own = records.patient_of_user(principal.user_id)
        if own is None:
            return []
        patient_id = own.id
    if patient_id is None:
        raise Problem(422, "patient_id: name the patient whose consultations to list")
    return list(reversed(records.list_consultations(patient_id)))


@router.get("", response_model=list[ConsultationSummary])
def list_consultations(
    principal: Caller,
    records: RecordsSession,
    patient_id: int | None = Query(default=None, ge=1, description="A patient of the caller's care team."),
) -> list[ConsultationSummary]:
    """The caller's consultations, newest first, without their messages: a patient's own; a physician's
    for one patient of their care team (``?patient_id=``). Admins are refused (no patient data)."""
    return [ConsultationSummary.model_validate(c) for c in consultations_of(records, principal, patient_id)]


@router.get("/{consultation_id}", response_model=ConsultationOut)
def get_consultation(consultation_id: str, records: RecordsSession) -> ConsultationOut:
    """A consultation with its messages (each answer with its provenance)."""
    if not THREAD_ID.match(consultation_id):
        raise Problem(404, "not found")
    return consultation_out(records, consultation_id, with_messages=True)


def _sse(events: Iterator[tuple[str, dict[str, Any]]]) -> Iterator[str]:
    for event, data in events:
        yield f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.post(
    "/{consultation_id}/messages",
    response_model=TurnResponse,
    openapi_extra=MESSAGE_BODY,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the turn's outcome"}},
)
async def post_message(
    consultation_id: str, request: Request, principal: Caller, services: Services
) -> TurnResponse | StreamingResponse:
    """Send a message (JSON, or multipart with pictures / DICOM files). With
    ``Accept: text/event-stream`` the answer streams: ``node`` events as the agent moves, ``token``
    events as the model writes, then ``done`` with the outcome."""
    started = time.perf_counter()
    if not THREAD_ID.match(consultation_id):
        raise Problem(404, "not found")
    settings = services.settings
    body, uploads = await read_body(request, MessageRequest, settings.max_upload_bytes)
    check_message(settings, body.message)
    turn = TurnInput(body.message, body.request, body.image_task, body.study_id, uploads)
    if "text/event-stream" in request.headers.get("accept", ""):
        # Access is checked and the message stored before the stream starts: refusals stay plain HTTP.
        events = await run_in_threadpool(stream_turn, services, principal, consultation_id, turn)
        stream = _sse(observe_stream(events, started))
        return StreamingResponse(iterate_in_threadpool(stream), media_type="text/event-stream")
    outcome = await run_in_threadpool(run_turn, services, principal, consultation_id, turn)
    observe_turn(outcome)
    return TurnResponse.model_validate(outcome)
