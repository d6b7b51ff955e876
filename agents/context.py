"""The runtime context of one turn: what the nodes use but LangGraph must never checkpoint.

Image bytes, the records connection and the tool clients reach the nodes here (``runtime.context``),
while the checkpointed state (agents.state) holds only text, ids and pixel-store keys.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

from memory.pixels import PixelStore
from memory.records import Records
from tools.healthgpt import HealthGPTClient
from tools.specialists import PendingScreen, Screening, SpecialistsClient

# (record id, text, kind) for each earlier record of the patient that retrieval may search.
HistoryTexts = tuple[tuple[str, str, str], ...]


class FineTunes(Protocol):
    """What the admin route may ask of the fine-tune service (serving implements it): start a job on a
    plugin for the turn's admin, returning the job's id and status; refusals raise the records' errors."""

    def start_for_turn(self, plugin: str) -> tuple[int, str]: ...


@dataclass(frozen=True)
class TurnContext:
    """Per-turn inputs that must not be checkpointed (image bytes, connections) or come from settings."""

    image: bytes | None = None  # the picture the model sees this turn
    max_new_tokens: int = 64
    records: Callable[[], AbstractContextManager[Records]] | None = None
    pixels: PixelStore | None = None
    history_turns: int = 6
    # The clients the graph was built with fill these when a turn gives none (agents.graph.build_graph).
    client: HealthGPTClient | None = None
    specialists: SpecialistsClient | None = None
    finetunes: FineTunes | None = None  # admins' turns only, where the gateway runs fine-tunes
    # The screen of this turn's message, sent to a remote specialists deployment before the graph ran
    # (serving.turns): the safety step takes it instead of screening the same text again.
    screening: PendingScreen | None = None
    # The patient's earlier records (Records.history_texts), read by the gateway in the transaction
    # that stored this turn's message: one transaction and one audit lock fewer than reading them
    # again in the consult step.
    history: HistoryTexts | None = None

    def with_tools(self, client: HealthGPTClient, specialists: SpecialistsClient) -> TurnContext:
        """This context, with the given clients where it names none."""
        return replace(
            self,
            client=client if self.client is None else self.client,
            specialists=specialists if self.specialists is None else self.specialists,
        )

    def model(self) -> HealthGPTClient:
        if self.client is None:
            raise RuntimeError("this turn has no HealthGPT client (TurnContext.client)")
        return self.client

    def screens(self) -> SpecialistsClient:
        if self.specialists is None:
            raise RuntimeError("this turn has no specialist models (TurnContext.specialists)")
        return self.specialists

    def screen(self, text: str) -> Screening:
        """The screening of ``text``: the one started ahead for it, else screened now."""
        ahead = self.screening
        if ahead is not None and ahead.text == text:
            return ahead.result()
        return self.screens().screen(text)

    def patient_history(self, patient_id: int, consultation_id: str | None) -> HistoryTexts:
        """The patient's earlier records that retrieval may search: the ones read ahead with this turn's
        message, else read now (one audited access either way)."""
        if self.history is not None:
            return self.history
        with self.open_records() as records:
            return tuple(records.history_texts(patient_id, exclude=consultation_id))

    def open_records(self) -> AbstractContextManager[Records]:
        if self.records is None:
            raise RuntimeError("this turn has no records access (TurnContext.records)")
        return self.records()
