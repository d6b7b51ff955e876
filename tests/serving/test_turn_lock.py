"""A turn holds the audit chain's lock only for its own writes: the model's count of the message and the
checkpoint read happen outside the records transaction whose first audit row locks the chain's head for
every writer (a remote model replica may keep a caller waiting behind its queue)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from memory.audit import append
from memory.db import normalise_url
from tests.agents.scenarios.conftest import new_consultation, say
from tests.serving.conftest import open_api


@contextmanager
def _chain_free(database_url: str) -> Iterator[Callable[[], bool]]:
    """Whether another connection could take the audit head's lock right now (without waiting)."""
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":

        def free() -> bool:
            connection = sqlite3.connect(parsed.database, timeout=0, isolation_level=None)
            try:
                connection.execute("BEGIN IMMEDIATE")  # the write lock SQLite's no-op head update takes
                connection.execute("ROLLBACK")
                return True
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc)
                return False
            finally:
                connection.close()

        yield free
        return
    engine = create_engine(normalise_url(database_url))

    def free() -> bool:
        with engine.connect() as connection, connection.begin() as transaction:
            locked = connection.execute(
                text("SELECT id FROM audit_head WHERE id = 1 FOR UPDATE SKIP LOCKED")
            ).first()
            transaction.rollback()
        return locked is not None

    try:
        yield free
    finally:
        engine.dispose()


def test_the_model_and_the_checkpoint_are_asked_outside_the_audit_lock(
    tmp_path: Path, database_url: str, tiny_model
) -> None:
    client, services, people = open_api(tmp_path, database_url, tiny_model)
    stack = ExitStack()
    try:
        free = stack.enter_context(_chain_free(database_url))
        seen: list[tuple[str, bool]] = []
        count, read = services.model.prompt_size, services.checkpointer.saver.get_tuple

        def counting(*args, **kwargs):
            seen.append(("count", free()))
            return count(*args, **kwargs)

        def reading(*args, **kwargs):
            seen.append(("checkpoint", free()))
            return read(*args, **kwargs)

        consultation = new_consultation(client, people.pam)
        services.model.prompt_size = counting
        services.checkpointer.saver.get_tuple = reading
        response = say(client, people.pam, consultation, "I have had a dry cough for two days.")
        assert response.status_code == 200, response.text
        assert {kind for kind, _ in seen} == {"count", "checkpoint"}
        assert all(was_free for _, was_free in seen), seen
        # The probe itself sees a lock that is held: inside a records transaction after an audited read.
        with services.sessions() as session, session.begin():
            append(session, actor=None, action="test.probe", resource="test")
            session.flush()
            assert not free()
        assert free()
    finally:
        stack.close()
        client.__exit__(None, None, None)
        services.close()
