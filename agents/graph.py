"""The Health Agent: one LangGraph graph for patients, physicians and admins. Wiring only; the steps are
in agents.nodes, the state in agents.state, the runtime context in agents.context.

    intake -> safety_screen -> route -> consult [-> same_day] | second_read -> review | image_task
                                        | history | admin | escalate | refuse  -> compose -> post_check
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from agents import nodes
from agents.context import TurnContext
from agents.routing import Route
from agents.state import ChatState, InputState
from tools.healthgpt import HealthGPTClient
from tools.specialists import InProcessSpecialists, PendingScreen, SpecialistsClient, screen_ahead

__all__ = ["TurnContext", "build_graph", "start_screen"]

Node = Callable[..., ChatState]
NODES: dict[str, Node] = {
    "intake": nodes.intake,
    "safety_screen": nodes.safety_screen,
    "route": nodes.decide_route,
    "consult": nodes.consult,
    "second_read": nodes.second_read,
    "review": nodes.review,
    "image_task": nodes.image_task,
    "history": nodes.history,
    "admin": nodes.admin,
    "escalate": nodes.escalate,
    "same_day": nodes.same_day,
    "refuse": nodes.refuse,
    "compose": nodes.compose,
    "post_check": nodes.post_check,
}
# Each of these ends its branch; compose and post_check then finish every turn the same way.
_TO_COMPOSE = ("same_day", "review", "image_task", "history", "admin", "escalate", "refuse")


def build_graph(
    client: HealthGPTClient,
    checkpointer: BaseCheckpointSaver | None = None,
    specialists: SpecialistsClient | None = None,
) -> CompiledStateGraph[ChatState, TurnContext, InputState, ChatState]:
    """The compiled graph; ``client`` and ``specialists`` serve every turn whose context names none."""
    specialists = specialists or InProcessSpecialists()
    graph = StateGraph(ChatState, context_schema=TurnContext, input_schema=InputState)
    for name, node in NODES.items():
        graph.add_node(name, _with_tools(node, client, specialists))
    graph.add_edge(START, "intake")
    graph.add_edge("intake", "safety_screen")
    graph.add_edge("safety_screen", "route")
    graph.add_conditional_edges("route", _chosen_route, {r.value: r.value for r in Route})
    graph.add_edge("second_read", "review")
    graph.add_conditional_edges("consult", _after_consult, ["same_day", "compose"])
    for name in _TO_COMPOSE:
        graph.add_edge(name, "compose")
    graph.add_edge("compose", "post_check")
    graph.add_edge("post_check", END)
    compiled = graph.compile(checkpointer=checkpointer)
    _SPECIALISTS[compiled] = specialists
    return compiled


# The specialists each compiled graph screens with, for callers that start a turn's screen early.
_SPECIALISTS: weakref.WeakKeyDictionary[CompiledStateGraph, SpecialistsClient] = weakref.WeakKeyDictionary()


def start_screen(graph: Any, text: str) -> PendingScreen | None:
    """Send ``text`` to ``graph``'s specialists now when they are remote (tools.specialists.screen_ahead),
    so the screen runs while the caller does its own work; hand it to the turn as
    ``TurnContext.screening``. None otherwise: the safety step then screens as usual."""
    specialists = _SPECIALISTS.get(graph)
    return screen_ahead(specialists, text) if specialists is not None else None


def _with_tools(node: Node, client: HealthGPTClient, specialists: SpecialistsClient) -> Node:
    """``node`` seeing this graph's tool clients in its runtime context. The context a caller passes is
    per turn and need not name them (the gateway's does not), so the graph supplies the ones it was
    built with; a node without a runtime parameter needs none and is returned as it is."""
    if "runtime" not in inspect.signature(node).parameters:
        return node

    def run(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
        context = (runtime.context or TurnContext()).with_tools(client, specialists)
        return node(state, runtime.override(context=context))

    return run


def _chosen_route(state: ChatState) -> str:
    return state["route"]


def _after_consult(state: ChatState) -> Literal["same_day", "compose"]:
    """A patient's message the screen rated urgent gets same-day advice (emergencies never reach
    consult: they escalate)."""
    triage: dict[str, Any] = state.get("triage") or {}
    urgent = state["actor"]["role"] == "patient" and triage.get("level") == "urgent"
    return "same_day" if urgent else "compose"
