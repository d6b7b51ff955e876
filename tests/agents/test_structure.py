"""The agent package's shape: typed state that matches the route table, wiring-only graph.py, tool
clients through the runtime context, one intake, and serving using only the agent's public API."""

from __future__ import annotations

import ast
import io
from pathlib import Path
from typing import get_args

import pytest
from PIL import Image

import agents
from agents import Intake, TurnContext, UploadRejected, build_graph, take_uploads
from agents.routing import Route
from agents.state import RouteName
from memory.pixels import PixelStore
from tools.healthgpt import InProcessHealthGPT

REPO = Path(__file__).resolve().parents[2]


def test_the_state_route_type_names_every_route() -> None:
    assert set(get_args(RouteName)) == {route.value for route in Route}


def test_graph_py_is_wiring_only() -> None:
    tree = ast.parse((REPO / "agents" / "graph.py").read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    longest = max(f.end_lineno - f.lineno + 1 for f in functions)
    assert longest <= 60, f"agents/graph.py has a function of {longest} lines"


def test_serving_uses_only_the_agents_public_api() -> None:
    public = set(agents.__all__)
    for path in (REPO / "serving").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "agents":
                # agents.graph.build_graph is the same public function agents exports.
                assert node.module in ("agents", "agents.graph"), f"{path}: imports {node.module}"
                names = {alias.name for alias in node.names}
                assert names <= public, f"{path}: imports {sorted(names - public)} from {node.module}"


class _Unusable:
    """A client the graph was built with, which this test's turn must never reach."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the graph's own client was used ({name})")


def test_a_turns_context_may_bring_its_own_model_client(tiny_model) -> None:
    graph = build_graph(_Unusable())  # type: ignore[arg-type]
    turn = {
        "messages": [{"role": "user", "content": "hello"}],
        "consultation_id": "t",
        "actor": {"user_id": 1, "name": "dr", "role": "physician"},
        "patient_id": None,
    }
    context = TurnContext(max_new_tokens=2, client=InProcessHealthGPT(tiny_model))
    state = graph.invoke(turn, context=context)
    assert state["route"] == "consult" and state["provenance"]["model"] == "tiny-seed0"


def test_tool_clients_fill_only_what_a_context_leaves_empty() -> None:
    mine, default, screens = object(), object(), object()
    filled = TurnContext(client=mine).with_tools(default, screens)  # type: ignore[arg-type]
    assert (filled.client, filled.specialists) == (mine, screens)
    with pytest.raises(RuntimeError, match="records"):
        TurnContext().open_records()


def test_a_patients_history_read_ahead_is_used_without_reading_the_records_again() -> None:
    read_ahead = (("consultation:c1", "migraine with aura", "consultation"),)
    assert TurnContext(history=read_ahead).patient_history(7, "c2") == read_ahead
    assert TurnContext(history=()).patient_history(7, "c2") == ()  # read ahead, and nothing there
    with pytest.raises(RuntimeError, match="records"):  # not read ahead: the records are asked
        TurnContext().patient_history(7, "c2")


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _intake(tmp_path: Path) -> Intake:
    def no_records():
        raise AssertionError("a turn with only pictures needs no records")

    return Intake(pixels=PixelStore(tmp_path), records=no_records, deid_key=b"k" * 32)


def test_the_intake_stores_pictures_and_hands_back_keys_and_the_models_picture(tmp_path: Path) -> None:
    intake = _intake(tmp_path)
    taken = take_uploads(intake, None, [agents.Upload("a.png", _png()), agents.Upload("b.png", _png())])
    assert len(taken.attachments) == 2 and taken.study_id is None
    assert taken.image == intake.pixels.get(taken.attachments[0])


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not a picture", "unsupported"), (b"\0" * 128 + b"DICM" + b"\0" * 16, "needs_patient")],
)
def test_the_intake_refuses_with_a_reason(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(UploadRejected) as refused:
        take_uploads(_intake(tmp_path), None, [agents.Upload("x", data)])
    assert refused.value.reason == reason
