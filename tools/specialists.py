"""The CPU specialists the agent screens every message with (red-flag triage and intent), behind one
small client: in-process, or a Ray Serve deployment so gateway replicas do not each load the model."""

from __future__ import annotations

import contextlib
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


class PendingScreen:
    """A screen of ``text`` already sent to the Specialists deployment before the agent's safety step
    needs it, so the remote call runs while the turn does its own work (access checks, storing the
    message, reading the checkpoint); the step takes its result."""

    def __init__(self, text: str, response: Any, timeout_s: float) -> None:
        self.text = text
        self._response, self._timeout_s = response, timeout_s

    def result(self) -> Screening:
        """The screening, waiting for it if need be; raises what the screen raised."""
        return self._response.result(timeout_s=self._timeout_s)

    def drop(self) -> None:
        """The turn was refused: the result is not wanted (cancelled where it has not run yet)."""
        with contextlib.suppress(Exception):  # best effort: an unwanted result is simply never read
            self._response.cancel()


def screen_ahead(client: SpecialistsClient, text: str) -> PendingScreen | None:
    """Send ``text`` to a remote specialists deployment now, without waiting; None for an in-process
    client, which screens in the safety step itself: on a shared CPU, screening beside the turn's own
    work only adds contention (measured: slower at p50 and p99 on 2 busy cores)."""
    if isinstance(client, RayServeSpecialists):
        return PendingScreen(text, client.handle.screen.remote(text), client.timeout_s)
    return None
