"""AI reads: reading one, and the physician's sign-off that resumes the waiting review step. A signed read
of a study imported from the PACS goes back to it as a DICOM SR (through the outbox: pending until the
PACS has it); correcting a signed read amends it, and the amended SR replaces the earlier one."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from memory import outbox
from memory.schema import ReadStatus, Role
from memory.users import Principal
from serving.api.deps import Caller, Physician, Services
from serving.api.routes.pacs import outbox_of
from serving.api.schemas import ERROR_RESPONSES, PathId, ReadOut, SignoffRequest, TurnResponse
from serving.observability import observe_turn
from serving.outbox import LEASE_S, state_of
from serving.problems import Problem
from serving.services import GatewayServices
from serving.turns import records_for, resume_review

router = APIRouter(prefix="/v1/reads", tags=["studies"], responses=ERROR_RESPONSES)


class PacsReportOut(BaseModel):
    """The signed report's way back to the PACS (imported studies only)."""

    status: Literal["pending", "delivered"] = Field(description="pending: queued, retried until delivered")
    report_status: Literal["final", "amended"]
    attempts: int
    sr_instance_uid: str
    last_error: str


class ReadWithReportOut(ReadOut):
    pacs_report: PacsReportOut | None = Field(
        default=None, description="The latest signed version's DICOM SR in the PACS; null: not imported."
    )


def _pacs_report(services: GatewayServices, principal: Principal, read_id: int) -> dict[str, Any] | None:
    with records_for(services, principal) as records:
        records.get_read(read_id)
        pushes = outbox.pushes_of(records.session, read_id)
        if not pushes:
            return None
        state = state_of(pushes[-1])
    return {
        "status": state.status,
        "report_status": state.report_status,
        "attempts": state.attempts,
        "sr_instance_uid": state.sr_uid,
        "last_error": state.last_error,
    }


@router.get("/{read_id}", response_model=ReadWithReportOut)
def get_read(read_id: PathId, principal: Caller, services: Services) -> ReadWithReportOut:
    """A read. Patients see their reads once a physician signed them, and only the signed text: a draft the
    physician corrected is not theirs to act on (``ai_draft`` is null for them, as in the web app)."""
    with records_for(services, principal) as records:
        read = ReadOut.model_validate(records.get_read(read_id))
    if principal.role is Role.patient:
        read = read.model_copy(update={"ai_draft": None})
    return ReadWithReportOut(**read.model_dump(), pacs_report=_pacs_report(services, principal, read_id))


def _push(request: Request, services: GatewayServices, principal: Principal, read_id: int) -> dict | None:
    """Queue the signed read for the PACS (durably, first), then try it once at once."""
    with records_for(services, principal) as records:
        push = outbox.enqueue(records.session, records.get_read(read_id), hold_s=LEASE_S)
        push_id = push.id if push is not None else None
    if push_id is None:
        return None
    worker = outbox_of(request)
    if not worker.deliver(push_id):
        worker.kick()
    return _pacs_report(services, principal, read_id)


def _amend(services: GatewayServices, principal: Principal, read_id: int, text: str) -> dict[str, Any]:
    """A correction of a signed read: signed again, as ``amended``."""
    with records_for(services, principal) as records:
        read = records.sign_read(read_id, text)
        provenance = read.provenance or {}
        return {
            "consultation_id": provenance.get("consultation_id") or "",
            "message_id": None,
            "status": "answered",
            "answer": read.physician_final or "",
            "disclaimer": "",
            "route": "second_read",
            "escalated": False,
            "triage": None,
            "read_id": read.id,
            "provenance": {"author": "physician", "signed_by": provenance.get("signed_by")},
            "tool_results": {"status": str(read.status)},
        }


@router.post("/{read_id}/signoff", response_model=TurnResponse)
async def signoff(
    request: Request, read_id: PathId, body: SignoffRequest, principal: Physician, services: Services
) -> TurnResponse:
    """Sign the AI draft as it is, or correct it (the correction is kept as feedback on the adapter).
    Correcting a read already signed amends it. A study imported from the PACS gets the signed report
    back as a DICOM SR; ``tool_results.pacs_report`` says whether the PACS has it yet."""
    if body.action == "correct" and not (body.text or "").strip():
        raise Problem(422, "text: a correction needs the corrected read")
    with records_for(services, principal) as records:
        signed = records.get_read(read_id).status is not ReadStatus.preliminary
    if signed and body.action == "correct":
        outcome = await run_in_threadpool(_amend, services, principal, read_id, (body.text or "").strip())
    else:
        outcome = await run_in_threadpool(resume_review, services, principal, read_id, body.action, body.text)
        observe_turn(outcome)
    report = await run_in_threadpool(_push, request, services, principal, read_id)
    if report is not None:
        outcome["tool_results"] = {**(outcome.get("tool_results") or {}), "pacs_report": report}
    return TurnResponse.model_validate(outcome)
