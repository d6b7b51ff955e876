"""Administration: feedback counts and adapter versions, never patient data."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import Admin, RecordsSession, Services
from serving.api.schemas import ERROR_RESPONSES, AdapterOut, AdaptersOut, FeedbackCount
from serving.turns import records_for

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERROR_RESPONSES)


@router.get("/feedback/summary", response_model=list[FeedbackCount])
def feedback_summary(_admin: Admin, records: RecordsSession) -> list[FeedbackCount]:
    """Feedback counts per plugin, adapter version and kind (no patient data)."""
    return [FeedbackCount.model_validate(a) for a in records.feedback_aggregates()]


@router.get("/adapters", response_model=AdaptersOut)
def adapters(principal: Admin, services: Services) -> AdaptersOut:
    """Registered adapter versions, and what the model serves now."""
    with records_for(services, principal) as records:
        registered = [AdapterOut.model_validate(a) for a in records.list_adapters()]
    # Asked after the transaction closes: the model may take seconds to answer.
    return AdaptersOut(registered=registered, serving=services.model.info())
