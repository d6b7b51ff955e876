"""The CPU specialists the agent screens every message with (red-flag triage and intent), behind one
small client: in-process, or a Ray Serve deployment so gateway replicas do not each load the model."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel

from tools import embeddings
from tools.intent import IntentResult, classify_intent
from tools.triage import TriageResult, triage


class Screening(BaseModel):
    triage: TriageResult
    intent: IntentResult


class SpecialistsClient(Protocol):
    def screen(self, text: str) -> Screening: ...


class InProcessSpecialists:
    def screen(self, text: str) -> Screening:
        # One embedding of the message, as written, for both screens (intent and triage's second opinion).
        embeddings.prefetch([text])
        return Screening(triage=triage(text), intent=classify_intent(text))


class RayServeSpecialists:
    """Calls the Specialists deployment; ``handle`` is its ``DeploymentHandle`` (call from a thread)."""

    def __init__(self, handle: Any, timeout_s: float = 30.0) -> None:
        self.handle, self.timeout_s = handle, timeout_s

    def screen(self, text: str) -> Screening:
        return self.handle.screen.remote(text).result(timeout_s=self.timeout_s)
