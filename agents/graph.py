"""The Health Agent graph. Today one node (consult); later issues add intake, safety screening and
routing by role and intent in front of it and composition checks after it."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agents.prompts import DEMO_WEIGHTS_NOTICE, DISCLAIMER
from tools.healthgpt import AskRequest, HealthGPTClient


class Message(TypedDict):
    role: str  # "user" | "assistant"
    content: str


class ChatState(TypedDict, total=False):
    messages: Annotated[list[Message], operator.add]  # the consultation transcript, appended to
    answer: str
    disclaimer: str
    provenance: dict[str, Any]


@dataclass(frozen=True)
class TurnContext:
    """Per-turn inputs that must not be checkpointed (image bytes) or that come from settings."""

    image: bytes | None = None
    max_new_tokens: int = 64


def build_graph(client: HealthGPTClient, checkpointer: BaseCheckpointSaver | None = None):
    def consult(state: ChatState, runtime: Runtime[TurnContext]) -> ChatState:
        context = runtime.context or TurnContext()
        question = state["messages"][-1]["content"]
        result = client.ask(
            AskRequest(question=question, image=context.image, max_new_tokens=context.max_new_tokens)
        )
        text = result.text or "(the model returned no text)"
        if result.provenance.demo_weights:
            text = f"{text}\n\n{DEMO_WEIGHTS_NOTICE}"
        return {
            "messages": [{"role": "assistant", "content": text}],
            "answer": text,
            "disclaimer": DISCLAIMER,
            "provenance": result.provenance.model_dump(),
        }

    graph = StateGraph(ChatState, context_schema=TurnContext)
    graph.add_node("consult", consult)
    graph.add_edge(START, "consult")
    graph.add_edge("consult", END)
    return graph.compile(checkpointer=checkpointer)
