"""Consultation threads survive a restart, in SQLite and in PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.graph import TurnContext, build_graph
from memory.checkpoints import open_checkpointer
from memory.db import make_engine, make_session_factory, transaction
from memory.migrate import upgrade
from tools.healthgpt import InProcessHealthGPT


def _turn(text: str, thread: str) -> dict:
    """One user turn, as the gateway hands it to the graph (a physician's chat needs no records)."""
    return {
        "messages": [{"role": "user", "content": text}],
        "consultation_id": thread,
        "actor": {"user_id": 1, "name": "dr", "role": "physician"},
        "patient_id": None,
    }


@pytest.fixture
def checkpoint_url(database_url: str, tmp_path: Path) -> str:
    return database_url if database_url.startswith("postgresql") else str(tmp_path / "checkpoints.sqlite")


def test_thread_persists_across_reopen(checkpoint_url: str, tiny_model) -> None:
    client = InProcessHealthGPT(tiny_model)
    config = {"configurable": {"thread_id": "user-1:abc"}}
    context = TurnContext(max_new_tokens=4)

    first = open_checkpointer(checkpoint_url)
    try:
        graph = build_graph(client, first.saver)
        graph.invoke(_turn("hello", "user-1:abc"), config, context=context)
        state = graph.invoke(_turn("again", "user-1:abc"), config, context=context)
        assert [m["role"] for m in state["messages"]] == ["user", "assistant", "user", "assistant"]
    finally:
        first.close()

    second = open_checkpointer(checkpoint_url)
    try:
        graph = build_graph(client, second.saver)
        restored = graph.get_state(config).values
        assert [m["content"] for m in restored["messages"]][::2] == ["hello", "again"]
        assert restored["provenance"]["model"] == "tiny-seed0"
        assert graph.get_state({"configurable": {"thread_id": "user-2:abc"}}).values == {}
    finally:
        second.close()


def _principal_world(sessions):
    from memory.records import Records
    from memory.schema import Role
    from memory.users import Principal

    with transaction(sessions) as session:
        user, _ = Records(session, Principal(0, "setup", Role.admin)).create_user("pat", Role.patient)
        patient_id = Records(session, Principal(0, "setup", Role.admin)).create_patient("P", user.id).id
    return Principal(user.id, "pat", Role.patient), patient_id


def _count(saver, thread_id: str) -> int:
    return len(list(saver.list({"configurable": {"thread_id": thread_id}})))


def test_erasure_and_retention(database_url: str, checkpoint_url: str, tiny_model) -> None:
    from memory.records import Records
    from memory.threads import erase_consultation, prune_closed

    engine = make_engine(database_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    patient, patient_id = _principal_world(sessions)
    checkpointer = open_checkpointer(checkpoint_url)
    try:
        graph = build_graph(InProcessHealthGPT(tiny_model), checkpointer.saver)
        for thread in ("keep", "erase"):
            with transaction(sessions) as session:
                Records(session, patient).open_consultation(thread, patient_id)
            for text in ("one", "two"):
                turn = _turn(text, thread)
                config = {"configurable": {"thread_id": thread}}
                graph.invoke(turn, config, context=TurnContext(max_new_tokens=2))
        assert _count(checkpointer.saver, "keep") > 1

        with transaction(sessions) as session:
            records = Records(session, patient)
            records.close_consultation("keep")
            assert prune_closed(records, checkpointer.saver) == 1
        assert _count(checkpointer.saver, "keep") == 1
        state = graph.get_state({"configurable": {"thread_id": "keep"}}).values
        assert [m["content"] for m in state["messages"]][::2] == ["one", "two"]  # the latest holds it all

        with transaction(sessions) as session:
            erase_consultation(Records(session, patient), checkpointer.saver, "erase")
        assert _count(checkpointer.saver, "erase") == 0
        assert graph.get_state({"configurable": {"thread_id": "erase"}}).values == {}
    finally:
        checkpointer.close()
        engine.dispose()
