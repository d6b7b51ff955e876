"""The outbox for the PACS (table ``report_pushes``): signed reports (DICOM SR) and accepted generated
images (Secondary Capture) — what to deliver, who is delivering it, and what happened. System-level, like
a queue: callers check access (``Records.get_read``, ``Records.review_derived_image``) before they enqueue
for a person; the gateway's worker drains it with no person behind it.

A push snapshots one signed version of a read (text, signer, time), so a later amendment never rewrites
what an earlier push carries, and its SR UIDs are fixed when it is written: delivering it twice stores
the same instance twice, which a PACS keeps once. A derived image is pushed once, when it is accepted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from memory import audit
from memory.schema import (
    DerivedImage,
    DerivedStatus,
    PacsImport,
    PushKind,
    PushStatus,
    Read,
    ReadStatus,
    ReportPush,
    Study,
    utcnow,
)

MAX_ERROR_CHARS = 2000
SWEEP_WINDOW = timedelta(days=7)
ACCEPTED = "accepted"  # the signature of an image push: an image is accepted once


def new_uid() -> str:
    """A DICOM UID of the UUID-derived form (PS3.5 B.2): no registered root needed."""
    return f"2.25.{uuid.uuid4().int}"


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back naive (stored as UTC); PostgreSQL aware.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def signature_of(read: Read) -> str:
    assert read.signed_at is not None
    return _aware(read.signed_at).isoformat(timespec="microseconds")


def pushes_of(session: Session, read_id: int) -> list[ReportPush]:
    query = select(ReportPush).where(ReportPush.read_id == read_id).order_by(ReportPush.id)
    return list(session.scalars(query))


def enqueue(session: Session, read: Read, *, hold_s: float = 0.0) -> ReportPush | None:
    """The push of ``read``'s current signed version, written once; None when there is nothing to push
    (not signed, or the study did not come from the PACS). ``hold_s``: the worker leaves it alone that
    long, while the caller makes the first attempt itself (past it, a caller that died is covered)."""
    if read.status is ReadStatus.preliminary or read.signed_at is None or not read.physician_final:
        return None
    origin = session.scalar(select(PacsImport).where(PacsImport.study_id == read.study_id))
    if origin is None:
        return None
    signature = signature_of(read)
    earlier = pushes_of(session, read.id)
    for push in earlier:
        if push.signature == signature:
            return push
    study = session.get(Study, read.study_id)
    assert study is not None
    provenance = read.provenance or {}
    signer = provenance.get("signed_by") or {"user_id": read.signed_by, "name": f"user {read.signed_by}"}
    payload: dict[str, Any] = {
        "text": read.physician_final,
        "signer": {"id": str(signer.get("user_id")), "name": str(signer.get("name"))},
        "signed_at": signature,
        "read_at": _aware(read.created_at).isoformat(),
        "author": provenance.get("author", "physician"),
        "model": {k: str(provenance.get(k) or "unknown") for k in ("model", "plugin", "adapter_version")},
        "slices_read": list(provenance.get("slices_read") or []),
        "modality": study.modality or "OT",
        "patient_id": study.patient_id,
    }
    previous = earlier[-1] if earlier else None
    if previous is not None:
        payload["replaces"] = {"sr_uid": previous.sr_uid, "series_uid": previous.sr_series_uid}
    push = ReportPush(
        read_id=read.id,
        signature=signature,
        report_status=str(read.status),
        sr_uid=new_uid(),
        # Every version of one read's report goes into one SR series of the original study.
        sr_series_uid=previous.sr_series_uid if previous is not None else new_uid(),
        replaces_uid=previous.sr_uid if previous is not None else None,
        payload=payload,
        status=PushStatus.pending,
        attempts=0,
        next_attempt_at=utcnow() + timedelta(seconds=hold_s),
        last_error="",
    )
    return _written(session, push, study.patient_id, {"read_id": read.id, "status": push.report_status})


def _written(session: Session, push: ReportPush, patient_id: int, detail: dict[str, Any]) -> ReportPush:
    """A new push, stored and audited in the caller's transaction (no person behind the queue)."""
    session.add(push)
    session.flush()
    audit.append(session, actor=None, action="report_push.write", resource="report_push",
                 resource_id=push.id, patient_id=patient_id, detail=detail)  # fmt: skip
    return push


def unqueued_signed_reads(session: Session, within: timedelta = SWEEP_WINDOW, limit: int = 200) -> list[Read]:
    """Signed reads of imported studies whose current signature has no push yet: a sign-off that did not
    go through the API (the web pages), or a gateway that stopped between signing and enqueueing. Only
    reads signed within ``within`` are looked at: this is a safety net, not the way pushes are made."""
    query = (
        select(Read)
        .join(PacsImport, PacsImport.study_id == Read.study_id)
        .where(Read.status != ReadStatus.preliminary, Read.signed_at >= utcnow() - within)
        .order_by(Read.id)
        .limit(limit)
    )
    found = []
    for read in session.scalars(query):
        pushed = set(session.scalars(select(ReportPush.signature).where(ReportPush.read_id == read.id)))
        if read.signed_at is not None and signature_of(read) not in pushed:
            found.append(read)
    return found


def claim(session: Session, push_id: int, lease_s: float, now: datetime | None = None) -> bool:
    """Take ``push_id`` for one delivery attempt unless someone holds it; ``False`` if not ours."""
    now = now or utcnow()
    result = session.execute(
        update(ReportPush)
        .where(
            ReportPush.id == push_id,
            ReportPush.status == PushStatus.pending,
            or_(ReportPush.claimed_until.is_(None), ReportPush.claimed_until < now),
        )
        .values(claimed_until=now + timedelta(seconds=lease_s))
    )
    return result.rowcount == 1


def due(session: Session, limit: int = 20, now: datetime | None = None) -> list[int]:
    """Pending pushes whose time has come, oldest first; only the first pending push of a read, so its
    versions reach the PACS in the order they were signed."""
    now = now or utcnow()
    older = aliased(ReportPush)
    earlier_pending = exists().where(
        and_(
            older.read_id == ReportPush.read_id,
            older.id < ReportPush.id,
            older.status == PushStatus.pending,
        )
    )
    query = (
        select(ReportPush.id)
        .where(ReportPush.status == PushStatus.pending, ReportPush.next_attempt_at <= now, ~earlier_pending)
        .order_by(ReportPush.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def delivered(session: Session, push_id: int) -> None:
    push = session.get(ReportPush, push_id)
    assert push is not None
    push.status, push.delivered_at, push.claimed_until = PushStatus.delivered, utcnow(), None
    push.attempts += 1
    push.last_error = ""
    patient_id = push.payload.get("patient_id")
    audit.append(session, actor=None, action="report_push.deliver", resource="report_push",
                 resource_id=push.id, patient_id=patient_id,
                 detail={**_subject(push), "sr_uid": push.sr_uid})  # fmt: skip


def _subject(push: ReportPush) -> dict[str, int | None]:
    """What a push is about, as its audit rows name it."""
    return {"image_id": push.image_id} if push.kind is PushKind.sc else {"read_id": push.read_id}


def failed(session: Session, push_id: int, error: str, first_s: float, max_s: float) -> datetime:
    """Record a failed attempt; the next one waits twice as long as the last (up to ``max_s``)."""
    push = session.get(ReportPush, push_id)
    assert push is not None
    push.attempts += 1
    wait = min(max_s, first_s * 2 ** (push.attempts - 1))
    push.next_attempt_at = utcnow() + timedelta(seconds=wait)
    push.claimed_until = None
    push.last_error = error[:MAX_ERROR_CHARS]
    return push.next_attempt_at


def get(session: Session, push_id: int) -> ReportPush:
    push = session.get(ReportPush, push_id)
    if push is None:
        raise LookupError(f"no report push {push_id}")
    return push


# -- generated images, as Secondary Captures of the original study ------------------------------------------


def pushes_of_image(session: Session, image_id: int) -> list[ReportPush]:
    query = select(ReportPush).where(ReportPush.image_id == image_id).order_by(ReportPush.id)
    return list(session.scalars(query))


def enqueue_image(session: Session, image: DerivedImage, *, hold_s: float = 0.0) -> ReportPush | None:
    """The push of an accepted generated image to its study's ORIGINAL study, written once; None when
    there is nothing to push (not accepted, or the study did not come from the PACS). The instance and
    series UIDs are fixed here, so every retry stores the same instance."""
    if image.status is not DerivedStatus.accepted:
        return None
    origin = session.scalar(select(PacsImport).where(PacsImport.study_id == image.study_id))
    if origin is None:
        return None
    earlier = pushes_of_image(session, image.id)
    if earlier:
        return earlier[0]
    study = session.get(Study, image.study_id)
    assert study is not None
    provenance = image.provenance or {}
    # A snapshot of what the capture says: the pixels are content-addressed, so the key alone pins them.
    payload: dict[str, Any] = {
        "task": image.task,
        "source_slice": image.source_slice,
        "pixel_key": image.pixel_key,
        "model": {k: str(provenance.get(k) or "unknown") for k in ("model", "plugin", "adapter_version")},
        "accepted_by": image.reviewed_by,
        "patient_id": study.patient_id,
    }
    push = ReportPush(
        kind=PushKind.sc,
        image_id=image.id,
        signature=ACCEPTED,
        report_status=ACCEPTED,
        sr_uid=new_uid(),
        sr_series_uid=new_uid(),
        payload=payload,
        status=PushStatus.pending,
        attempts=0,
        next_attempt_at=utcnow() + timedelta(seconds=hold_s),
        last_error="",
    )
    return _written(session, push, study.patient_id, {"image_id": image.id, "kind": str(PushKind.sc)})
