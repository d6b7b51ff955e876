"""The inference engine: continuous batching over one HealthGPT with every plugin resident.

Requests join the running batch between decode steps and leave it as soon as they finish; each row
keeps its own plugin (H-LoRA routing, CLIP layer, projector, embedding tables), its own rotary positions
and its own slice of the KV cache, left-padded to the batch's length and masked. Tokens stream out as
they are decoded. The engine is framework-agnostic: the Ray Serve deployment and the in-process client
both drive it. It uses only the model's public contract, :class:`models.contract.BatchModel`.

Adapter hot-swap: a plugin name the callers use ("comprehension") is an alias of a loaded plugin
version ("comprehension@v2"). :meth:`BatchEngine.load_adapter` loads the new version beside the old one
without pausing decoding, then re-points the alias between two steps; rows already running keep the
version they were admitted with, and the old version is freed once none uses it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from models.contract import BatchModel, GenerationRequest
from models.healthgpt import Answer
from models.limits import EngineLimits
from models.spec import PluginSpec

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """Base of the engine's refusals; ``retry_after_s`` is set where trying later can succeed."""

    retry_after_s: float | None = None


class QueueFull(EngineError):
    def __init__(self, waiting: int, retry_after_s: float) -> None:
        super().__init__(f"the engine queue is full ({waiting} waiting); retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class EngineClosed(EngineError):
    retry_after_s = 5.0


class RequestCancelled(EngineError):
    pass


class RequestTimedOut(EngineError):
    pass


class InvalidRequest(EngineError, ValueError):
    pass


@dataclass(frozen=True)
class TokenEvent:
    """One streamed step: the new token and the text it completed (may be empty mid-character)."""

    token_id: int
    text: str


@dataclass
class Job:
    """A request inside the engine. Iterate :meth:`tokens` to stream, or wait on :meth:`result`."""

    request: GenerationRequest
    deadline: float
    plugin_key: str = ""  # the loaded plugin version serving this row, fixed at admission
    adapter_version: str = ""
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    _events: queue.Queue = field(default_factory=queue.Queue)
    _done: threading.Event = field(default_factory=threading.Event)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _answer: Answer | None = None
    _error: BaseException | None = None

    def cancel(self) -> None:
        """Stop generating for this request; its batch slot is freed at the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def tokens(self, timeout_s: float | None = None) -> Iterator[TokenEvent]:
        while True:
            try:
                item = self._events.get(timeout=timeout_s)
            except queue.Empty as exc:
                self.cancel()
                raise RequestTimedOut("no token within the timeout") from exc
            if item is None:
                break
            yield item
        if self._error is not None:
            raise self._error

    def result(self, timeout_s: float | None = None) -> Answer:
        if not self._done.wait(timeout_s):
            self.cancel()
            raise RequestTimedOut(f"no answer within {timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer

    @property
    def time_to_first_token_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted

    def _finish(self, answer: Answer | None, error: BaseException | None = None) -> None:
        self._answer, self._error = answer, error
        self._done.set()
        self._events.put(None)


@dataclass(frozen=True)
class EngineFigures:
    """The engine's state and running totals at one moment, for monitoring. Mean batch size is
    ``batch_rows / forward_passes``; mean time to first token is ``first_token_s / first_tokens``."""

    queue_length: int
    active_rows: int
    tokens_generated: int
    forward_passes: int
    batch_rows: int
    first_tokens: int
    first_token_s: float
    plugins: dict[str, str]  # plugin -> adapter version serving new requests


@dataclass
class _Row:
    job: Job
    next_token: int  # chosen, not yet fed back
    position: int  # rotary position of next_token


class BatchEngine:
    """Owns the model's decode loop in one background thread. Thread-safe ``submit``/``load_adapter``."""

    def __init__(self, model: BatchModel, limits: EngineLimits | None = None) -> None:
        self.model = model
        self.limits = limits or EngineLimits()
        self._waiting: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        # The engine's own lock: guards the queue, the aliases and ``_closed``. Rows, cache and mask belong
        # to the loop thread alone; the model serialises its forward passes itself.
        self._cond = threading.Condition()
        self._closed = False
        version = model.spec.adapter_version
        # alias -> (loaded plugin key, adapter version)
        self._aliases: dict[str, tuple[str, str]] = {name: (name, version) for name in model.spec.plugins}
        self._resident = dict(self._aliases)  # what the spec loaded: a rollback to it reuses those tensors
        self._retiring: set[str] = set()
        self.steps = 0
        # Running totals for monitoring, written by the loop thread only (serving exports them). Mean
        # batch size = batch_rows / forward_passes; mean time to first token = first_token_s / first_tokens.
        self.tokens_generated = 0
        self.forward_passes = 0
        self.batch_rows = 0
        self.first_tokens = 0
        self.first_token_s = 0.0
        self._thread = threading.Thread(target=self._loop, name="healthgpt-engine", daemon=True)
        self._thread.start()

    # -- public -------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Job:
        self._validate(request)
        job = Job(request=request, deadline=time.monotonic() + self.limits.request_timeout_s)
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            if len(self._waiting) >= self.limits.max_queue:
                # A slot frees roughly every (batch's average generation) — a coarse, honest hint.
                raise QueueFull(len(self._waiting), retry_after_s=max(1.0, len(self._waiting) / 8))
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    def generate(self, request: GenerationRequest, timeout_s: float | None = None) -> Answer:
        return self.submit(request).result(timeout_s)

    def adapter_version(self, plugin: str) -> str:
        return self.resolve(plugin)[1]

    def resolve(self, plugin: str) -> tuple[str, str]:
        """The loaded plugin key and adapter version serving ``plugin`` now (for work outside the loop)."""
        try:
            return self._aliases[plugin]
        except KeyError:
            raise InvalidRequest(
                f"unknown plugin {plugin!r}; this model has {sorted(self._aliases)}"
            ) from None

    @property
    def plugins(self) -> dict[str, str]:
        """Public plugin name -> adapter version now serving new requests."""
        return {name: version for name, (_, version) in self._aliases.items()}

    def load_adapter(self, plugin: str, version: str, spec: PluginSpec) -> None:
        """Load ``version`` of ``plugin`` beside the current one, then switch new requests to it."""
        current_key, current_version = self.resolve(plugin)
        if version == current_version:
            return
        # Back to the spec's own version (a rollback to the base): its resident tensors serve again.
        key = plugin if self._resident.get(plugin) == (plugin, version) else f"{plugin}@{version}"
        if key not in self.model.spec.plugins:
            self.model.add_plugin(key, spec)  # decoding goes on meanwhile
        with self._cond:
            self._aliases[plugin] = (key, version)
            if current_key != key:
                self._retiring.add(current_key)
            self._retiring.discard(key)
            self._cond.notify_all()
        log.info("plugin %s now serves adapter version %s", plugin, version)

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    def figures(self) -> EngineFigures:
        return EngineFigures(
            queue_length=self.queue_length,
            active_rows=self.active,
            tokens_generated=self.tokens_generated,
            forward_passes=self.forward_passes,
            batch_rows=self.batch_rows,
            first_tokens=self.first_tokens,
            first_token_s=self.first_token_s,
            plugins=self.plugins,
        )

    @property
    def active(self) -> int:
        return len(self._rows)

    def close(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job._finish(None, EngineClosed("the engine shut down before this request started"))
        self._thread.join(timeout_s)

    # -- validation ---------------------------------------------------------------------------------
    def _validate(self, request: GenerationRequest) -> None:
        self.resolve(request.plugin)  # unknown plugins are refused here, before queueing
        # An image takes exactly its grid of VQ tokens (+ the end marker and stop), whatever the text cap.
        cap = self.limits.max_new_tokens if request.constrain_vq is None else request.constrain_vq + 2
        if not 1 <= request.max_new_tokens <= cap:
            raise InvalidRequest(f"max_new_tokens must be between 1 and {cap}")
        if any(not s for s in request.stop):
            raise InvalidRequest("stop strings must not be empty")

    # -- the loop -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._closed and not self._rows:
                    return
                joiners = []
                while self._waiting and len(self._rows) + len(joiners) < self.limits.max_batch:
                    job = self._waiting.popleft()
                    job.plugin_key, job.adapter_version = self._aliases[job.request.plugin]
                    joiners.append(job)
            try:
                with torch.no_grad():
                    self._drop_finished_jobs()
                    if joiners:
                        self._prefill(joiners)
                    if self._rows:
                        self._decode_step()
                self.steps += 1
            except Exception as exc:  # a failed step fails its rows, never the engine
                log.exception("engine step failed")
                for row in self._rows:
                    row.job._finish(None, EngineError(f"generation failed: {exc}"))
                self._rows, self._cache, self._mask = [], None, None
            self._free_retired_plugins()

    def _prefill(self, jobs: list[Job]) -> None:
        model = self.model
        embeddings, accepted = [], []
        for job in jobs:
            if job.cancelled:
                job._finish(None, RequestCancelled("cancelled before it started"))
                continue
            r = job.request
            try:
                row = model.embed_prompt(r.question, r.image, job.plugin_key)
            except ValueError as exc:
                job._finish(None, InvalidRequest(str(exc)))
                continue
            if row.shape[0] > self.limits.max_prompt_tokens:
                job._finish(
                    None,
                    InvalidRequest(
                        f"prompt of {row.shape[0]} tokens exceeds {self.limits.max_prompt_tokens}"
                    ),
                )
                continue
            job.prompt_tokens = row.shape[0]
            embeddings.append(row)
            accepted.append(job)
        if not accepted:
            return
        embeds, mask, positions = model.left_padded(embeddings)
        cache = DynamicCache()
        plugins = [job.plugin_key for job in accepted]
        logits = model.forward(embeds, mask, plugins, cache, positions)[:, -1]
        new_rows = [_Row(job, -1, int(e.shape[0])) for job, e in zip(accepted, embeddings, strict=True)]
        keep = self._emit(new_rows, logits)
        cache, mask = _select(cache, mask, keep)
        new_rows = [new_rows[i] for i in keep]
        if new_rows:
            self._merge(new_rows, cache, mask)

    def _decode_step(self) -> None:
        model = self.model
        plugins = [row.job.plugin_key for row in self._rows]
        step = model.embed_step([row.next_token for row in self._rows], plugins)
        assert self._mask is not None and self._cache is not None
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=1)
        positions = torch.tensor([[row.position] for row in self._rows], device=model.device)
        logits = model.forward(step, self._mask, plugins, self._cache, positions)[:, -1]
        for row in self._rows:
            row.position += 1
        self._retain(self._emit(self._rows, logits))

    def _emit(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token, stream it, finish rows that are done; returns rows to keep."""
        model = self.model
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        keep = []
        now = time.monotonic()
        self.forward_passes += 1
        self.batch_rows += len(rows)
        for i, row in enumerate(rows):
            job, r = row.job, row.job.request
            if job.cancelled:
                job._finish(None, RequestCancelled("cancelled"))
                continue
            if now > job.deadline:
                job._finish(None, RequestTimedOut(f"exceeded {self.limits.request_timeout_s:.0f} s"))
                continue
            token = model.next_token(logits[i], r.constrain_vq, job.generated)
            job.generated.append(token)
            job.logprobs.append(float(logprobs[i, token]))
            self.tokens_generated += 1
            if job.first_token_at is None:
                job.first_token_at = time.perf_counter()
                self.first_tokens += 1
                self.first_token_s += job.first_token_at - job.submitted
            finished = token in model.eos_token_ids or len(job.generated) >= r.max_new_tokens
            text, stopped = self._text(job)
            if text != job.text:
                job._events.put(
                    TokenEvent(token, text[len(job.text) :] if text.startswith(job.text) else text)
                )
                job.text = text
            else:
                job._events.put(TokenEvent(token, ""))
            if finished or stopped:
                job._finish(self._answer(job))
            else:
                row.next_token = token
                keep.append(i)
        return keep

    def _text(self, job: Job) -> tuple[str, bool]:
        """The text so far, cut at the first stop string; holds back a trailing partial character."""
        text = self.model.decode_text(job.generated)
        for stop in job.request.stop:
            at = text.find(stop)
            if at >= 0:
                return text[:at].rstrip(), True
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return job.text, False
        return text, False

    def _answer(self, job: Job) -> Answer:
        return Answer(
            text=job.text,
            token_ids=list(job.generated),
            plugin=job.request.plugin,
            prompt_tokens=job.prompt_tokens,
            seconds=time.perf_counter() - job.submitted,
            logprobs=list(job.logprobs),
            adapter_version=job.adapter_version,
        )

    def _merge(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self._cache is None or self._mask is None:
            self._cache, self._mask, self._rows = cache, mask, rows
            return
        length = max(self._mask.shape[1], mask.shape[1])
        merged = DynamicCache()
        for index, (old, new) in enumerate(zip(self._cache.layers, cache.layers, strict=True)):
            keys = torch.cat([_left_pad(old.keys, length), _left_pad(new.keys, length)], dim=0)
            values = torch.cat([_left_pad(old.values, length), _left_pad(new.values, length)], dim=0)
            merged.update(keys, values, index)
        self._mask = torch.cat([_left_pad(self._mask, length), _left_pad(mask, length)], dim=0)
        self._cache = merged
        self._rows = self._rows + rows

    def _drop_finished_jobs(self) -> None:
        """Rows whose client went away (cancelled) leave before the next step is computed."""
        for row in self._rows:
            if row.job.cancelled:
                row.job._finish(None, RequestCancelled("cancelled"))
        self._retain([i for i, row in enumerate(self._rows) if not row.job.cancelled])

    def _retain(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep`` (and their slices of the KV cache and mask)."""
        if len(keep) == len(self._rows) or self._cache is None or self._mask is None:
            return
        self._cache, self._mask = _select(self._cache, self._mask, keep)
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._mask = None

    def _free_retired_plugins(self) -> None:
        if not self._retiring:
            return
        with self._cond:
            in_use = {row.job.plugin_key for row in self._rows}
            for key in list(self._retiring):
                if key not in in_use and key not in {k for k, _ in self._aliases.values()}:
                    self._retiring.discard(key)
                    if "@" in key:  # versions loaded at runtime are freed; the spec's own stay resident
                        self.model.remove_plugin(key)


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad the sequence axis (-2 for K/V ``[b, h, t, d]``, -1 for masks ``[b, t]``) on the left."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[axis]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _select(cache: DynamicCache, mask: torch.Tensor, keep: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """Keep only ``keep`` rows, and drop leading columns no remaining row attends to."""
    index = torch.tensor(keep, dtype=torch.long, device=mask.device)
    mask = mask.index_select(0, index)
    start = 0
    if len(keep):
        real = mask.sum(0) > 0
        start = int(real.nonzero()[0]) if bool(real.any()) else mask.shape[1]
    selected = DynamicCache()
    for layer_index, layer in enumerate(cache.layers):
        selected.update(
            layer.keys.index_select(0, index)[:, :, start:],
            layer.values.index_select(0, index)[:, :, start:],
            layer_index,
        )
    return selected, mask[:, start:]
