"""The HealthGPT tool: what the agent calls to ask the model, whatever hosts it.

One protocol, :class:`HealthGPTClient`, with two implementations: :class:`InProcessHealthGPT` (tests,
the CLI) and :class:`RayServeHealthGPT` (production, over a Ray Serve deployment handle).
:class:`CascadeHealthGPT` composes two clients: a small model answers, a larger one takes over when the
small one is unsure or the case is flagged complex.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from models.contract import GenerationRequest
from tools.images import decode_image

if TYPE_CHECKING:  # the model stack loads torch: only InProcessHealthGPT needs it, and imports it itself
    from models.engine import BatchEngine, Job
    from models.healthgpt import Answer, HealthGPT

log = logging.getLogger(__name__)


class Signer(BaseModel):
    user_id: int
    name: str


class Provenance(BaseModel):
    """Who produced an output: the model (model text), a physician (``author="physician"``: no model
    fields), or the model's draft signed as it is by a physician (``author="ai+physician"``)."""

    model: str | None = None
    plugin: str | None = None
    adapter_version: str | None = None
    demo_weights: bool = False
    seconds: float | None = Field(default=None, ge=0)
    author: Literal["ai", "physician", "ai+physician"] = "ai"
    signed_by: Signer | None = Field(default=None, description="The physician who signed or wrote it.")
    escalated_from: str | None = Field(default=None, description="The model the cascade escalated from.")
    escalation_reason: str | None = None
    triage: dict[str, Any] | None = Field(
        default=None, description="The red-flag screen's decision when it changed the answer (urgent care)."
    )


class AskRequest(BaseModel):
    question: str = Field(min_length=1)
    image: bytes | None = Field(default=None, description="A validated upload (PNG, JPEG, ...).")
    plugin: str = "comprehension"
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    stop: list[str] = Field(default_factory=list, max_length=8, description="End the answer before these.")
    complex: bool = Field(default=False, description="Flagged complex: a cascade goes to the large model.")


# Byte-level tokenizers decode some ids to control characters (the tiny model's id 190 is NUL). None is
# text for a reader: NUL cannot be stored in PostgreSQL (a failed turn), escapes drive terminals.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def readable(text: str) -> str:
    """Model text as people get it: line breaks and tabs kept, other control characters dropped."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


class AskResult(BaseModel):
    text: str
    token_ids: list[int]
    mean_logprob: float = Field(le=0, description="Mean log-probability of the generated tokens.")
    provenance: Provenance


class ImageTask(StrEnum):
    reconstruction = "reconstruction"
    ct_to_mri = "ct_to_mri"
    mri_to_ct = "mri_to_ct"
    super_resolution = "super_resolution"
    text_to_image = "text_to_image"


# The instruction each task sends to the generation plugin (text_to_image sends the caller's text).
TASK_INSTRUCTIONS: dict[ImageTask, str] = {
    ImageTask.reconstruction: "Reconstruct the image.",
    ImageTask.ct_to_mri: "Convert the CT image into an MRI image.",
    ImageTask.mri_to_ct: "Convert the MRI image into a CT image.",
    ImageTask.super_resolution: "Generate a super-resolution version of the image.",
}


class ImageRequest(BaseModel):
    task: ImageTask
    # validate_default: a request that cannot run is invalid when made (the API answers 422 naming the
    # field), not a ValueError deep in the model call (which answered 500).
    image: bytes | None = Field(
        default=None,
        validate_default=True,
        description="The source image (every task but text_to_image).",
    )
    instruction: str | None = Field(
        default=None, validate_default=True, description="Text for text_to_image; else the task's own."
    )
    plugin: str = "generation"

    @field_validator("image")
    @classmethod
    def _source_for_task(cls, value: bytes | None, info: ValidationInfo) -> bytes | None:
        task = info.data.get("task")
        if value is None and task is not None and task is not ImageTask.text_to_image:
            raise PydanticCustomError(
                "image_required",
                "{task} needs a source image: attach a picture or a DICOM study, or name a study_id",
                {"task": task.value},
            )
        return value

    @field_validator("instruction")
    @classmethod
    def _not_blank(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("instruction must not be blank")
        if value is None and info.data.get("task") is ImageTask.text_to_image:
            raise PydanticCustomError(
                "instruction_required", "text_to_image needs an instruction describing the image"
            )
        return value

    def prompt(self) -> str:
        if self.task is ImageTask.text_to_image:
            if not self.instruction:
                raise ValueError("text_to_image needs an instruction describing the image")
            return self.instruction
        if self.image is None:
            raise ValueError(f"{self.task} needs a source image")
        return self.instruction or TASK_INSTRUCTIONS[self.task]


class ImageResult(BaseModel):
    png: bytes
    vq_indices: list[int]
    provenance: Provenance


class ScoreRequest(BaseModel):
    question: str = Field(min_length=1)
    choices: list[str] = Field(min_length=2, max_length=26)
    image: bytes | None = None
    plugin: str = "comprehension"

    @field_validator("choices")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if any(not c.strip() for c in value) or len(set(value)) != len(value):
            raise ValueError("choices must be distinct and non-blank")
        return value


class ChoiceScore(BaseModel):
    choice: str
    sum_logprob: float
    mean_logprob: float


class ScoreResult(BaseModel):
    best_index: int = Field(description="The choice with the highest mean token log-probability.")
    choices: list[ChoiceScore]
    provenance: Provenance

    @property
    def best(self) -> str:
        return self.choices[self.best_index].choice


class ModelHealth(BaseModel):
    model: str
    plugins: list[str]
    adapter_versions: dict[str, str] = Field(default_factory=dict)
    demo_weights: bool


class PromptSize(BaseModel):
    """A prompt's length in the model's own tokens, and the most the model's engine accepts."""

    tokens: int = Field(ge=0)
    limit: int = Field(ge=1)

    @property
    def fits(self) -> bool:
        return self.tokens <= self.limit


class HealthGPTClient(Protocol):
    def ask(self, request: AskRequest) -> AskResult: ...
    # None: this host cannot tell (the engine still refuses an over-long prompt when it is asked).
    def prompt_size(
        self, question: str, has_image: bool = False, plugin: str = "comprehension"
    ) -> PromptSize | None: ...
    def ask_stream(self, request: AskRequest) -> Iterator[AskChunk]: ...
    def generate_image(self, request: ImageRequest) -> ImageResult: ...
    def score(self, request: ScoreRequest) -> ScoreResult: ...
    def info(self) -> ModelHealth: ...  # identity only, no forward pass
    def health(self) -> ModelHealth: ...  # identity, after a forward pass through every plugin


class AskChunk(BaseModel):
    """One piece of a streamed answer: text as it is decoded; the last chunk carries the result."""

    delta: str = ""
    result: AskResult | None = None


class InProcessHealthGPT:
    """Runs the model in this process, through the batching engine (concurrent calls share batches)."""

    def __init__(self, model: HealthGPT, engine: BatchEngine | None = None, timeout_s: float = 300.0) -> None:
        from models.engine import BatchEngine

        self.model = model
        self.engine = engine or BatchEngine(model)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.engine.close()

    def _provenance(self, plugin: str, seconds: float, version: str | None = None) -> Provenance:
        spec = self.model.spec
        return Provenance(
            model=spec.name,
            plugin=plugin,
            adapter_version=version or self.engine.adapter_version(plugin),
            demo_weights=spec.demo_weights,
            seconds=seconds,
        )

    def submit(self, request: AskRequest) -> Job:
        """Queue ``request`` in the engine; the job streams tokens and gives the answer (see to_result)."""
        image = decode_image(request.image) if request.image is not None else None
        return self.engine.submit(
            GenerationRequest(
                request.question, image, request.plugin, request.max_new_tokens, stop=tuple(request.stop)
            )
        )

    def to_result(self, answer: Answer) -> AskResult:
        return AskResult(
            text=readable(answer.text),
            token_ids=answer.token_ids,
            mean_logprob=min(0.0, answer.mean_logprob),
            provenance=self._provenance(answer.plugin, answer.seconds, answer.adapter_version),
        )

    def ask(self, request: AskRequest) -> AskResult:
        return self.to_result(self.submit(request).result(self.timeout_s))

    def prompt_size(
        self, question: str, has_image: bool = False, plugin: str = "comprehension"
    ) -> PromptSize:
        """Counted as the engine's prefill counts it (models.engine), without running the model: the
        templated prompt's token ids, the image placeholder standing for one feature per CLIP patch."""
        key, _ = self.engine.resolve(plugin)
        tokens = len(self.model.input_ids(self.model.prompt_for(question, has_image, key)))
        if has_image:
            vision = self.model.vision.config
            tokens += (vision.image_size // vision.patch_size) ** 2 - 1
        return PromptSize(tokens=tokens, limit=self.engine.limits.max_prompt_tokens)

    def ask_stream(self, request: AskRequest) -> Iterator[AskChunk]:
        """Yields text as it is decoded, then the full result; closing the iterator cancels the request."""
        job = self.submit(request)
        try:
            for event in job.tokens(self.timeout_s):
                if delta := readable(event.text or ""):
                    yield AskChunk(delta=delta)
            yield AskChunk(result=self.to_result(job.result(self.timeout_s)))
        finally:
            if not job.done:
                job.cancel()  # the consumer went away: free the batch slot

    def generate_image(self, request: ImageRequest) -> ImageResult:
        prompt = request.prompt()
        source = decode_image(request.image) if request.image is not None else None
        started = time.perf_counter()
        cells = self.model.image_token_count(request.plugin)
        answer = self.engine.generate(
            GenerationRequest(prompt, source, request.plugin, cells + 2, constrain_vq=cells), self.timeout_s
        )
        image, indices = self.model.image_from_tokens(answer.token_ids)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return ImageResult(
            png=buffer.getvalue(),
            vq_indices=indices,
            provenance=self._provenance(
                request.plugin, time.perf_counter() - started, answer.adapter_version
            ),
        )

    def score(self, request: ScoreRequest) -> ScoreResult:
        image = decode_image(request.image) if request.image is not None else None
        started = time.perf_counter()
        key, version = self.engine.resolve(request.plugin)
        scored = []
        for choice in request.choices:
            score = self.model.score(request.question, choice, image, plugin=key)
            total = score.sum_logprob
            mean = total / len(score.logprobs)
            scored.append(ChoiceScore(choice=choice, sum_logprob=total, mean_logprob=mean))
        # Mean, not sum: a longer choice must not lose only for having more tokens.
        best = max(range(len(scored)), key=lambda i: scored[i].mean_logprob)
        return ScoreResult(
            best_index=best,
            choices=scored,
            provenance=self._provenance(request.plugin, time.perf_counter() - started, version),
        )

    def info(self) -> ModelHealth:
        spec = self.model.spec
        return ModelHealth(
            model=spec.name,
            plugins=sorted(self.engine.plugins),
            adapter_versions=self.engine.plugins,
            demo_weights=spec.demo_weights,
        )

    def health(self) -> ModelHealth:
        """A one-token pass through every plugin and the engine: proves the weights answer, not just load."""
        for plugin in self.engine.plugins:
            self.engine.generate(GenerationRequest("ping", None, plugin, 1), timeout_s=60)
        return self.info()


class RayServeHealthGPT:
    """Calls a HealthGPT Ray Serve deployment; ``handle`` is its ``DeploymentHandle``.

    A request caught on a replica that dies is sent again (generation has no side effects), up to
    ``retries`` times; Serve routes the retry to a live replica. Call from a worker thread, not from an
    event loop (``.result()`` blocks).
    """

    def __init__(self, handle: Any, timeout_s: float = 300.0, retries: int = 2) -> None:
        self.handle = handle
        self.timeout_s = timeout_s
        self.retries = retries
        self._counts = True  # False once the deployment turned out to have no prompt_size

    def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        from ray.exceptions import RayActorError

        for attempt in range(self.retries + 1):
            try:
                return (
                    getattr(self.handle, method).remote(*args).result(timeout_s=timeout_s or self.timeout_s)
                )
            except RayActorError:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")

    def ask(self, request: AskRequest) -> AskResult:
        return self._call("ask", request)

    def prompt_size(
        self, question: str, has_image: bool = False, plugin: str = "comprehension"
    ) -> PromptSize | None:
        # Only a pre-check (the replica's engine enforces the limit and a failed turn is rolled back),
        # so a replica that cannot count, such as one deployed before this method existed, is no error.
        if not self._counts:
            return None
        try:
            return self._call("prompt_size", question, has_image, plugin, timeout_s=30.0)
        except Exception as exc:  # noqa: BLE001 - see above
            if "'prompt_size' that does not exist" in str(exc):  # Serve's answer: ask it no more
                self._counts = False
            log.warning("the model replica could not count a prompt: %s", type(exc).__name__)
            return None

    def ask_stream(self, request: AskRequest) -> Iterator[AskChunk]:
        # Not retried: part of the answer may already be on its way to the user.
        yield from self.handle.options(stream=True).ask_stream.remote(request)

    def generate_image(self, request: ImageRequest) -> ImageResult:
        return self._call("generate_image", request)

    def score(self, request: ScoreRequest) -> ScoreResult:
        return self._call("score", request)

    def info(self) -> ModelHealth:
        return self._call("info", timeout_s=30.0)

    def health(self) -> ModelHealth:
        return self._call("health", timeout_s=60.0)


class CascadeSettings(BaseModel):
    enabled: bool = False
    min_mean_logprob: float = Field(
        default=-1.5, le=0, description="Escalate when the small model's mean token log-probability is lower."
    )
    escalate_complex: bool = Field(default=True, description="Cases flagged complex go to the large model.")


class CascadeHealthGPT:
    """M3 answers; L14 answers instead when M3 is unsure or the case is complex.

    Image generation always stays with the primary model: only the Phi-3 (M3) release has the generation
    plugin. Scoring escalates only complex cases (a score has no single confidence to threshold).
    """

    def __init__(
        self, primary: HealthGPTClient, escalation: HealthGPTClient, settings: CascadeSettings
    ) -> None:
        self.primary, self.escalation, self.settings = primary, escalation, settings

    def _reason(self, complex_case: bool, mean_logprob: float | None) -> str | None:
        if complex_case and self.settings.escalate_complex:
            return "flagged complex"
        if mean_logprob is not None and mean_logprob < self.settings.min_mean_logprob:
            return f"low confidence (mean log-prob {mean_logprob:.3f} < {self.settings.min_mean_logprob})"
        return None

    def _triage(self, request: AskRequest) -> tuple[AskResult | None, str | None]:
        """The primary's answer if it stands (``(answer, None)``), else why to escalate (and the
        primary's answer, if one was computed, for its time)."""
        reason = self._reason(request.complex, None)
        if reason is not None:
            return None, reason
        first = self.primary.ask(request)
        return first, self._reason(False, first.mean_logprob)

    def _escalated(self, provenance: Provenance, reason: str, first: AskResult | None) -> None:
        # The primary's name comes from its answer when there is one: no call to the replica for it.
        provenance.escalated_from = first.provenance.model if first else self.primary.info().model
        provenance.escalation_reason = reason
        earlier = (first.provenance.seconds or 0.0) if first else 0.0
        provenance.seconds = (provenance.seconds or 0.0) + earlier

    def prompt_size(
        self, question: str, has_image: bool = False, plugin: str = "comprehension"
    ) -> PromptSize | None:
        """The tighter of the two models: either may have to answer."""
        sizes = [
            size
            for client in (self.primary, self.escalation)
            if (size := client.prompt_size(question, has_image, plugin)) is not None
        ]
        return max(sizes, key=lambda s: s.tokens - s.limit, default=None)

    def ask(self, request: AskRequest) -> AskResult:
        first, reason = self._triage(request)
        if reason is None and first is not None:
            return first
        assert reason is not None
        second = self.escalation.ask(request)
        self._escalated(second.provenance, reason, first)
        return second

    def ask_stream(self, request: AskRequest) -> Iterator[AskChunk]:
        """The small model's answer cannot be streamed before its confidence is known: it arrives whole;
        an escalated answer streams from the large model."""
        first, reason = self._triage(request)
        if reason is None and first is not None:
            yield AskChunk(delta=first.text)
            yield AskChunk(result=first)
            return
        assert reason is not None
        for chunk in self.escalation.ask_stream(request):
            if chunk.result is not None:
                self._escalated(chunk.result.provenance, reason, first)
            yield chunk

    def generate_image(self, request: ImageRequest) -> ImageResult:
        return self.primary.generate_image(request)

    def score(self, request: ScoreRequest, complex_case: bool = False) -> ScoreResult:
        reason = self._reason(complex_case, None)
        if reason is None:
            return self.primary.score(request)
        result = self.escalation.score(request)
        self._escalated(result.provenance, reason, None)
        return result

    def info(self) -> ModelHealth:
        return self._combine(self.primary.info(), self.escalation.info())

    def health(self) -> ModelHealth:
        return self._combine(self.primary.health(), self.escalation.health())

    @staticmethod
    def _combine(first: ModelHealth, second: ModelHealth) -> ModelHealth:
        return ModelHealth(
            model=f"{first.model}+{second.model}",
            plugins=sorted(set(first.plugins) | set(second.plugins)),
            demo_weights=first.demo_weights or second.demo_weights,
        )
