"""Feedback on one answer or read, kept with the adapter version that produced it."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import RecordsSession
from serving.api.schemas import ERROR_RESPONSES, FeedbackRequest, FeedbackResponse

router = APIRouter(prefix="/v1/feedback", tags=["feedback"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, response_model=FeedbackResponse)
def feedback(body: FeedbackRequest, records: RecordsSession) -> FeedbackResponse:
    """Rate, correct or state a preference about one answer or read; kept with its adapter version."""
    stored = records.add_feedback(body.kind, body.payload, message_id=body.message_id, read_id=body.read_id)
    return FeedbackResponse.model_validate(stored)
