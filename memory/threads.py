"""Consultation threads across SQL and the LangGraph checkpointer: erasure and retention."""

from __future__ import annotations

import sqlite3

from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy import select

from memory.records import Records
from memory.schema import Consultation, ConsultationStatus


def erase_consultation(records: Records, saver: BaseCheckpointSaver, consultation_id: str) -> None:
    """Delete a consultation's rows (messages cascade) and every checkpoint and write of its thread.

    The SQL side is checked and deleted first, in the caller's transaction; the checkpoints go next,
    so a failure in between leaves checkpoints of a deleted consultation (retried by the next call)
    rather than a consultation whose history silently vanished."""
    records.delete_consultation(consultation_id)
    saver.delete_thread(consultation_id)


_LATEST = "SELECT MAX(checkpoint_id) FROM checkpoints WHERE thread_id = ? GROUP BY checkpoint_ns"


def _sqlite_keep_latest(connection: sqlite3.Connection, thread_ids: list[str]) -> None:
    # SqliteSaver has no prune(); our graphs use plain channels, so the latest checkpoint per
    # namespace holds the whole state and older ones (and their pending writes) can go.
    with connection:
        for thread_id in thread_ids:
            connection.execute(
                f"DELETE FROM writes WHERE thread_id = ? AND checkpoint_id NOT IN ({_LATEST})",  # noqa: S608
                (thread_id, thread_id),
            )
            connection.execute(
                f"DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id NOT IN ({_LATEST})",  # noqa: S608
                (thread_id, thread_id),
            )


def prune_closed(records: Records, saver: BaseCheckpointSaver) -> int:
    """Keep only the latest checkpoint of every closed consultation; returns how many threads."""
    thread_ids = list(
        records.session.scalars(
            select(Consultation.id).where(Consultation.status == ConsultationStatus.closed)
        )
    )
    if not thread_ids:
        return 0
    connection = getattr(saver, "conn", None)
    if isinstance(connection, sqlite3.Connection):
        _sqlite_keep_latest(connection, thread_ids)
    else:
        saver.prune(thread_ids, strategy="keep_latest")
    return len(thread_ids)
