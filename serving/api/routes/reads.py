"""AI reads: reading one, and the physician's sign-off that resumes the waiting review step."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from serving.api.deps import Physician, RecordsSession, Services
from serving.api.schemas import ERROR_RESPONSES, PathId, ReadOut, SignoffRequest, TurnResponse
from serving.observability import observe_turn
from serving.problems import Problem
from serving.turns import resume_review

router = APIRouter(prefix="/v1/reads", tags=["studies"], responses=ERROR_RESPONSES)


@router.get("/{read_id}", response_model=ReadOut)
def get_read(read_id: PathId, records: RecordsSession) -> ReadOut:
    """A read. Patients see their reads once a physician signed them."""
    return ReadOut.model_validate(records.get_read(read_id))


@router.post("/{read_id}/signoff", response_model=TurnResponse)
async def signoff(
    read_id: PathId, body: SignoffRequest, principal: Physician, services: Services
) -> TurnResponse:
    """Sign the AI draft as it is, or correct it (the correction is kept as feedback on the adapter)."""
    if body.action == "correct" and not (body.text or "").strip():
        raise Problem(422, "text: a correction needs the corrected read")
    outcome = await run_in_threadpool(resume_review, services, principal, read_id, body.action, body.text)
    observe_turn(outcome)
    return TurnResponse.model_validate(outcome)
