"""The caller's notifications (physicians: red flags raised in their patients' consultations)."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import RecordsSession
from serving.api.schemas import ERROR_RESPONSES, NotificationOut

router = APIRouter(prefix="/v1/notifications", tags=["feedback"], responses=ERROR_RESPONSES)


@router.get("", response_model=list[NotificationOut])
def notifications(records: RecordsSession) -> list[NotificationOut]:
    """Your notifications (physicians: red flags in your patients' consultations)."""
    return [NotificationOut.model_validate(n) for n in records.my_notifications()]
