"""Consultation threads survive a restart, in SQLite and in PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.graph import TurnContext, build_graph
from memory.checkpoints import open_checkpointer
from tools.healthgpt import InProcessHealthGPT


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
        graph.invoke({"messages": [{"role": "user", "content": "hello"}]}, config, context=context)
        state = graph.invoke({"messages": [{"role": "user", "content": "again"}]}, config, context=context)
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
