"""Imaging studies (de-identified DICOM) and the AI second reads a physician asks for."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from memory.schema import Role
from serving.api.bodies import STUDY_BODY, read_body
from serving.api.deps import Caller, Physician, Services
from serving.api.schemas import ERROR_RESPONSES, PathId, StudyForm, StudyOut, TurnResponse
from serving.observability import observe_turn
from serving.problems import Problem
from serving.turns import TurnInput, ingest_study, open_consultation, records_for, run_turn

router = APIRouter(prefix="/v1/studies", tags=["studies"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, response_model=StudyOut, openapi_extra=STUDY_BODY)
async def create_study(request: Request, principal: Caller, services: Services) -> StudyOut:
    """Upload a DICOM file: it is de-identified (header; burned-in text per setting) before it is kept."""
    form, uploads = await read_body(request, StudyForm, services.settings.max_upload_bytes)
    if len(uploads) != 1:
        raise Problem(422, "file: send exactly one DICOM file")
    patient_id = form.patient_id
    if principal.role is Role.patient:
        with records_for(services, principal) as records:
            own = records.patient_of_user(principal.user_id)
        # Another patient's id answers like a missing record.
        if own is None or patient_id not in (None, own.id):
            raise Problem(404, "not found")
        patient_id = own.id
    elif patient_id is None:
        raise Problem(422, "patient_id: required")
    stored = await run_in_threadpool(ingest_study, services, principal, patient_id, uploads[0])
    with records_for(services, principal) as records:
        return StudyOut.model_validate(records.get_study(stored.id))


@router.post("/{study_id}/reads", status_code=201, response_model=TurnResponse)
async def request_read(study_id: PathId, principal: Physician, services: Services) -> TurnResponse:
    """A physician asks for an AI second read: it is drafted, stored as PRELIMINARY, and waits for
    sign-off (``POST /v1/reads/{id}/signoff``)."""
    with records_for(services, principal) as records:
        patient_id = records.get_study(study_id).patient_id
    consultation_id = await run_in_threadpool(open_consultation, services, principal, patient_id)
    turn = TurnInput(f"Second read of study {study_id}", request="second_read", study_id=study_id)
    outcome = await run_in_threadpool(run_turn, services, principal, consultation_id, turn)
    observe_turn(outcome)
    return TurnResponse.model_validate(outcome)
