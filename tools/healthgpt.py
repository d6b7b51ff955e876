"""The HealthGPT tool: what the agent calls to ask the model, whatever hosts it.

Two clients share one protocol: :class:`InProcessHealthGPT` (tests, the CLI) and
:class:`RayServeHealthGPT` (production, over a Ray Serve deployment handle).
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from models.healthgpt import HealthGPT
from tools.images import decode_image


class Provenance(BaseModel):
    """Which model produced an output; attached to everything a model says."""

    model: str
    plugin: str
    adapter_version: str
    demo_weights: bool
    seconds: float = Field(ge=0)


class AskRequest(BaseModel):
    question: str = Field(min_length=1)
    image: bytes | None = Field(default=None, description="A validated upload (PNG, JPEG, ...).")
    plugin: str = "comprehension"
    max_new_tokens: int = Field(default=64, ge=1, le=4096)


class AskResult(BaseModel):
    text: str
    token_ids: list[int]
    provenance: Provenance


class ModelHealth(BaseModel):
    model: str
    plugins: list[str]
    demo_weights: bool


class HealthGPTClient(Protocol):
    def ask(self, request: AskRequest) -> AskResult: ...

    def health(self) -> ModelHealth: ...


class InProcessHealthGPT:
    """Runs the model in this process."""

    def __init__(self, model: HealthGPT) -> None:
        self.model = model

    def ask(self, request: AskRequest) -> AskResult:
        image = decode_image(request.image) if request.image is not None else None
        answer = self.model.ask(
            request.question, image, plugin=request.plugin, max_new_tokens=request.max_new_tokens
        )
        spec = self.model.spec
        return AskResult(
            text=answer.text,
            token_ids=answer.token_ids,
            provenance=Provenance(
                model=spec.name,
                plugin=answer.plugin,
                adapter_version=spec.adapter_version,
                demo_weights=spec.demo_weights,
                seconds=answer.seconds,
            ),
        )

    def health(self) -> ModelHealth:
        """A one-token forward pass through every plugin: proves the weights answer, not just load."""
        for plugin in self.model.spec.plugins:
            self.model.ask("ping", None, plugin=plugin, max_new_tokens=1)
        spec = self.model.spec
        return ModelHealth(model=spec.name, plugins=sorted(spec.plugins), demo_weights=spec.demo_weights)


class RayServeHealthGPT:
    """Calls a HealthGPT Ray Serve deployment; ``handle`` is its ``DeploymentHandle``.

    Call from a worker thread, not from an event loop (``.result()`` blocks).
    """

    def __init__(self, handle: Any, timeout_s: float = 300.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    def ask(self, request: AskRequest) -> AskResult:
        return self.handle.ask.remote(request).result(timeout_s=self.timeout_s)

    def health(self) -> ModelHealth:
        return self.handle.health.remote().result(timeout_s=30.0)
