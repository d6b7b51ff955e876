"""The audit log: append-only, each row hashing the previous one, so any edit or deletion shows.

Appends are serialised by updating the single ``audit_head`` row first: PostgreSQL row-locks it until
commit, SQLite takes its write lock, so two writers can never chain onto the same tip. A transaction
locks and reads the head once (one ``UPDATE … RETURNING``); its further rows chain onto the tip it holds,
and the head's new position is written with the rows at the next flush.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from memory.schema import AuditEntry, AuditHead, utcnow
from memory.users import Principal

GENESIS_HASH = "0" * 64
# The id of the HTTP request being served, set by the gateway: each row written meanwhile keeps it in its
# detail, so an audit row leads to that request's log lines.
REQUEST_ID: ContextVar[str | None] = ContextVar("healthagent_request_id", default=None)


def _utc_text(moment: datetime) -> str:
    # SQLite hands datetimes back naive (they were stored as UTC); PostgreSQL hands them back aware.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_digest(prev_hash: str, entry: AuditEntry) -> str:
    canonical = json.dumps(
        {
            "seq": entry.seq,
            "at": _utc_text(entry.at),
            "actor_id": entry.actor_id,
            "actor_role": entry.actor_role,
            "action": entry.action,
            "resource": entry.resource,
            "resource_id": entry.resource_id,
            "patient_id": entry.patient_id,
            "outcome": entry.outcome,
            "detail": entry.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def _head(session: Session) -> tuple[int, str]:
    seq, row_hash = session.execute(select(AuditHead.seq, AuditHead.row_hash).where(AuditHead.id == 1)).one()
    return seq, row_hash


def append(
    session: Session,
    *,
    actor: Principal | None,
    action: str,
    resource: str,
    resource_id: str | int = "",
    patient_id: int | None = None,
    outcome: str = "allowed",
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add one row in the caller's transaction (so it commits, or not, with what it records); it is
    written at the transaction's next flush."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        detail = {**(detail or {}), "request_id": request_id}
    head = _locked_head(session)
    seq, prev_hash = head.seq + 1, head.row_hash
    entry = AuditEntry(
        seq=seq,
        at=utcnow(),
        actor_id=actor.user_id if actor else None,
        actor_role=str(actor.role) if actor else "system",
        action=action,
        resource=resource,
        resource_id=str(resource_id),
        patient_id=patient_id,
        outcome=outcome,
        detail=detail or {},
        prev_hash=prev_hash,
        row_hash="",
    )
    entry.row_hash = row_digest(prev_hash, entry)
    # The head is a row of this session: the next flush (the caller's own, a query's autoflush, or the
    # commit) inserts the entries and moves the head together, in as few statements as the rows allow.
    head.seq, head.row_hash = seq, entry.row_hash
    session.add(entry)
    return entry


# session.info key: (the root transaction that locked the head, the head row as that transaction sees it)
_HELD_HEAD = "audit_head_held"


def _locked_head(session: Session) -> AuditHead:
    """The chain head, locked by this session's transaction: the first append of a transaction takes the
    lock with a no-op ``UPDATE`` that returns the row (one round trip for lock and read); later appends
    of the same transaction reuse the row, which the lock keeps current. A new transaction (after a
    commit or rollback) locks again."""
    root = session.get_transaction()
    held = session.info.get(_HELD_HEAD)
    if held is not None and held[0] is root and root is not None and root.is_active:
        return held[1]
    statement = (
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq)  # writes nothing, but takes the row's (PostgreSQL) or file's (SQLite) lock
        .returning(AuditHead)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    head = session.execute(statement).scalar_one()
    session.info[_HELD_HEAD] = (session.get_transaction(), head)
    return head


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify(session: Session, batch: int = 1000) -> Verification:
    """Walk the chain in order; name the first row whose hash, link or position is wrong."""
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=batch))
    for entry in rows.scalars():
        if entry.seq != expected_seq:
            return Verification(False, checked, expected_seq, f"row {expected_seq} is missing")
        if entry.prev_hash != expected_prev:
            return Verification(False, checked, entry.seq, "does not link to the previous row")
        if row_digest(entry.prev_hash, entry) != entry.row_hash:
            return Verification(False, checked, entry.seq, "its content does not match its hash")
        expected_prev, expected_seq, checked = entry.row_hash, expected_seq + 1, checked + 1
    head_seq, head_hash = _head(session)
    if (head_seq, head_hash) != (checked, expected_prev):
        reason = f"the chain head says {head_seq} rows ending in {head_hash[:12]}; found {checked}"
        return Verification(False, checked, checked + 1, reason)
    return Verification(True, checked)
