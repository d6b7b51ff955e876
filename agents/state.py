"""What the Health Agent's graph checkpoints per consultation thread, and what a turn hands it.

Only text, ids and pixel-store keys live here: the state is checkpointed, so image bytes and connections
travel in the runtime context instead (agents.context).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

Role = Literal["patient", "physician", "admin"]
RequestKind = Literal["message", "second_read", "image_task"]
# The values of agents.routing.Route, as the state stores them (a test keeps the two equal).
RouteName = Literal["consult", "second_read", "image_task", "history", "admin", "escalate", "refuse"]


class Message(TypedDict):
    role: Literal["user", "assistant"]
    content: str


class Actor(TypedDict):
    """Who is asking: from authentication, never from text."""

    user_id: int
    name: str
    role: Role


class InputState(TypedDict, total=False):
    """What the caller gives the graph for one turn (the rest of ChatState the nodes derive)."""

    consultation_id: str
    actor: Actor
    patient_id: int | None
    messages: Annotated[list[Message], operator.add]  # the consultation transcript, appended to
    request: RequestKind
    image_task: str | None
    study_id: int | None
    attachments: list[str]  # pixel-store keys of this turn's images
    read_id: int | None
    approval: dict[str, Any] | None


class ChatState(InputState, total=False):
    language: str
    triage: dict[str, Any]
    injection: list[str]
    intent: str
    route: RouteName
    refusal: str | None
    tool_results: dict[str, Any]
    draft: str
    provenance: dict[str, Any] | None
    answer: str
    disclaimer: str
    escalated: bool
    unscreened_notified: bool  # the care team was told of a message the screen could not read
