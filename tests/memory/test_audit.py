"""The audit chain: verification, tamper detection, append-only enforcement, concurrent writers."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from memory import audit
from memory.db import make_engine, make_session_factory, transaction
from memory.schema import Role
from memory.users import Principal

ADMIN = Principal(user_id=1, name="admin", role=Role.admin)


def _append(sessions, count: int, label: str = "x") -> None:
    for i in range(count):
        with transaction(sessions) as session:
            detail = {"i": i, "note": "ünïcode"}
            audit.append(
                session,
                actor=ADMIN,
                action="test.write",
                resource="test",
                resource_id=f"{label}{i}",
                detail=detail,
            )


def _verify(sessions) -> audit.Verification:
    with sessions() as session:
        return audit.verify(session)


def _tamper(sessions, statement: str) -> None:
    """What an attacker with database rights would do: lift the append-only guard, then edit."""
    engine = sessions.kw["bind"]
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update"))
            connection.execute(text(statement))
            connection.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update"))
        else:
            connection.execute(text("DROP TRIGGER audit_log_no_update"))
            connection.execute(text("DROP TRIGGER audit_log_no_delete"))
            connection.execute(text(statement))


def test_chain_verifies(sessions) -> None:
    assert _verify(sessions) == audit.Verification(True, 0)
    _append(sessions, 5)
    assert _verify(sessions) == audit.Verification(True, 5)


def test_rolled_back_append_leaves_no_trace(sessions) -> None:
    _append(sessions, 2)
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        audit.append(session, actor=ADMIN, action="test.write", resource="test")
        raise RuntimeError("the recorded work failed")
    _append(sessions, 1)
    assert _verify(sessions) == audit.Verification(True, 3)


@pytest.mark.parametrize(
    ("statement", "bad_seq", "reason"),
    [
        ("UPDATE audit_log SET resource_id = 'forged' WHERE seq = 3", 3, "content"),
        ("UPDATE audit_log SET outcome = 'allowed', detail = '{}' WHERE seq = 2", 2, "content"),
        ("DELETE FROM audit_log WHERE seq = 4", 4, "missing"),
        ("DELETE FROM audit_log WHERE seq = 6", 6, "head"),
    ],
)
def test_tampering_is_detected_and_located(sessions, statement: str, bad_seq: int, reason: str) -> None:
    _append(sessions, 6)
    _tamper(sessions, statement)
    result = _verify(sessions)
    assert not result.ok and result.first_bad_seq == bad_seq and reason in result.reason


def test_the_database_refuses_edits(sessions) -> None:
    _append(sessions, 1)
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), transaction(sessions) as session:
            session.execute(text(statement))
    assert _verify(sessions).ok


def _writer(url: str, label: str, count: int) -> None:
    engine = make_engine(url)
    _append(make_session_factory(engine), count, label)
    engine.dispose()


def test_concurrent_writers_keep_the_chain(sessions, database_url: str) -> None:
    """Two processes append at once: nothing lost, no fork in the chain."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(database_url, label, 40)) for label in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert _verify(sessions) == audit.Verification(True, 80)
