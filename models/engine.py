"""The inference engine: continuous batching over one HealthGPT with every plugin resident.

Requests join the running batch between decode steps and leave it as soon as they finish; each row
keeps its own plugin (H-LoRA routing, CLIP layer, projector, embedding tables), its own rotary positions
and its own slot of a preallocated KV cache (:class:`models.kv_cache.SlotCache`): rows are right-aligned
on one write column and masked on the left, so a join writes only the joiner's keys and values and a
decode step only the new column. Joiners are prefilled as a group of their own, in chunks of
``EngineLimits.prefill_chunk_tokens`` interleaved with decode steps of the running rows, so a long image
prompt delays the running rows by at most one chunk per step. Tokens stream out as they are decoded.
The engine is framework-agnostic: the Ray Serve deployment and the in-process client both drive it.
It uses only the model's public contract, :class:`models.contract.BatchModel`.

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

from models.contract import BatchModel, GenerationRequest
from models.decode_graph import FixedDecode
from models.healthgpt import Answer
from models.kv_cache import SlotCache
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
    # (plugin key, prompt embedding) of a joiner put back by the prefill budget: not embedded twice.
    embedded: tuple[str, torch.Tensor] | None = None
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


@dataclass
class _Prefill:
    """Joiners being prefilled together, a chunk of columns at a time, into a cache of their own."""

    jobs: list[Job]
    lengths: list[int]  # each prompt's tokens
    embeds: torch.Tensor  # [rows, longest, hidden], left-padded
    mask: torch.Tensor  # [rows, longest] bool
    positions: torch.Tensor  # [rows, longest]
    cache: SlotCache
    done: int = 0  # columns already through the model

    @property
    def width(self) -> int:
        return self.embeds.shape[1]


class BatchEngine:
    """Owns the model's decode loop in one background thread. Thread-safe ``submit``/``load_adapter``."""

    def __init__(self, model: BatchModel, limits: EngineLimits | None = None) -> None:
        self.model = model
        self.limits = limits or EngineLimits()
        self._waiting: deque[Job] = deque()
        self._rows: list[_Row] = []  # row i decodes in slot i of ``_cache``
        self._cache: SlotCache | None = None  # kept between bursts: its buffers are reused
        self._prefill: _Prefill | None = None  # joiners part-way through their prompts
        graphs = self.limits.decode_graphs
        if graphs is None:
            graphs = model.device.type == "cuda"
        self._fixed = FixedDecode(model) if graphs else None
        # The engine's own lock: guards the queue, the aliases and ``_closed``. Rows, caches and the
        # prefill belong to the loop thread alone; the model serialises its forward passes itself.
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
    def decode_graphs(self) -> dict[str, object] | None:
        """How decode steps run at fixed shapes (models.decode_graph): graphs recorded, or why recording
        was given up; None when the engine takes the ordinary step only."""
        fixed = self._fixed
        if fixed is None:
            return None
        return {
            "recorded_as_cuda_graphs": fixed.record,
            "fixed_steps": fixed.steps,
            "graphs": fixed.recorded,
            "failed": fixed.failed,
        }

    @property
    def active(self) -> int:
        """Rows decoding or being prefilled."""
        prefill = self._prefill
        return len(self._rows) + (len(prefill.jobs) if prefill is not None else 0)

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
                while not self._closed and not self._waiting and not self._rows and not self._prefill:
                    self._cond.wait()
                if self._closed and not self._rows and not self._prefill:
                    return
                joiners = []
                # One prefill group at a time: later arrivals form the next group once it has joined.
                while (
                    self._prefill is None
                    and self._waiting
                    and len(self._rows) + len(joiners) < self.limits.max_batch
                ):
                    job = self._waiting.popleft()
                    job.plugin_key, job.adapter_version = self._aliases[job.request.plugin]
                    joiners.append(job)
            try:
                with torch.no_grad():
                    self._drop_finished_jobs()
                    if joiners:
                        self._start_prefill(joiners)
                    # One chunk per step while rows decode (they wait at most one chunk); with none
                    # decoding nobody waits, so the whole prompt goes through, still chunk by chunk.
                    while self._prefill is not None:
                        self._prefill_chunk()
                        if self._rows:
                            break
                    if self._rows:
                        self._decode_step()
                self.steps += 1
            except Exception as exc:  # a failed step fails its rows, never the engine
                log.exception("engine step failed")
                failed = [row.job for row in self._rows]
                if self._prefill is not None:
                    failed += self._prefill.jobs
                for job in failed:
                    if not job.done:
                        job._finish(None, EngineError(f"generation failed: {exc}"))
                self._rows, self._cache, self._prefill = [], None, None
            self._free_retired_plugins()

    def _start_prefill(self, jobs: list[Job]) -> None:
        """Embed the joiners' prompts (the vision tower runs here) and set them up to prefill, as many
        as ``prefill_budget_tokens`` allows; the rest go back to the head of the queue."""
        model = self.model
        embeddings, accepted = [], []
        chunk, budget = self.limits.prefill_chunk_tokens, self.limits.prefill_budget_tokens
        tokens = 0  # carried by the group's busiest chunk, at most
        for index, job in enumerate(jobs):
            if job.cancelled:
                job._finish(None, RequestCancelled("cancelled before it started"))
                continue
            r = job.request
            try:
                if job.embedded is not None and job.embedded[0] == job.plugin_key:
                    row = job.embedded[1]
                else:
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
            # What each row adds to a chunk: its whole prompt or one chunk of it.
            carried = min(row.shape[0], chunk or row.shape[0])
            if budget is not None and accepted and tokens + carried > budget:
                job.embedded = (job.plugin_key, row)
                self._put_back(jobs[index:])
                break
            tokens += carried
            job.embedded = None
            job.prompt_tokens = row.shape[0]
            embeddings.append(row)
            accepted.append(job)
        if not accepted:
            return
        # Longest first: a chunk that is all padding for the shorter prompts runs without them (they
        # are the last rows), so a group of mixed lengths wastes at most a chunk per row on padding.
        order = sorted(range(len(accepted)), key=lambda i: -embeddings[i].shape[0])
        accepted, embeddings = [accepted[i] for i in order], [embeddings[i] for i in order]
        embeds, mask, positions = model.left_padded(embeddings)
        width = embeds.shape[1]
        self._prefill = _Prefill(
            jobs=accepted,
            lengths=[int(e.shape[0]) for e in embeddings],
            embeds=embeds,
            mask=mask.bool(),
            positions=positions,
            # Exactly the prompt's width: its own small cache, written once per chunk, never regridded.
            cache=SlotCache(slots=len(accepted), rows=len(accepted), capacity=width, block=width),
        )

    def _put_back(self, jobs: list[Job]) -> None:
        """Joiners that wait for the next group: back at the head of the queue in their order, ahead of
        later arrivals; refused if the engine closed meanwhile (its queue is already drained)."""
        with self._cond:
            if not self._closed:
                self._waiting.extendleft(reversed(jobs))
                return
        for job in jobs:
            job._finish(None, EngineClosed("the engine shut down before this request started"))

    def _prefill_chunk(self) -> None:
        """Run the next chunk of the prefilling group; after its last chunk its rows choose their first
        tokens and move into free slots of the running cache (copying only their own keys and values)."""
        prefill = self._prefill
        assert prefill is not None
        if all(job.cancelled for job in prefill.jobs):  # nobody is waiting for the rest of the prompt
            for job in prefill.jobs:
                job._finish(None, RequestCancelled("cancelled"))
            self._prefill = None
            return
        chunk = self.limits.prefill_chunk_tokens or prefill.width
        first, last = prefill.done, min(prefill.done + chunk, prefill.width)
        # Rows whose prompt starts before ``last`` (a prefix: the group is sorted longest first).
        rows = sum(1 for length in prefill.lengths if prefill.width - length < last)
        plugins = [job.plugin_key for job in prefill.jobs[:rows]]
        mask = prefill.cache.begin(prefill.mask[:rows, first:last])
        logits = self.model.forward(
            prefill.embeds[:rows, first:last],
            mask,
            plugins,
            prefill.cache,
            prefill.positions[:rows, first:last],
            last_only=True,
        )
        prefill.cache.commit()
        prefill.done = last
        if last < prefill.width:
            return
        self._prefill = None
        new_rows = [_Row(job, -1, length) for job, length in zip(prefill.jobs, prefill.lengths, strict=True)]
        keep = self._emit(new_rows, logits[:, -1])
        if not keep:
            return
        if self._cache is None:
            self._cache = SlotCache(slots=self.limits.max_batch, block=self.limits.kv_block_tokens)
        self._cache.adopt(prefill.cache, keep)
        self._rows += [new_rows[i] for i in keep]

    def _decode_step(self) -> None:
        model = self.model
        cache = self._cache
        assert cache is not None
        plugins = [row.job.plugin_key for row in self._rows]
        tokens = [row.next_token for row in self._rows]
        if self._fixed is not None and len(set(plugins)) == 1:
            logits = self._fixed.step(cache, tokens, [row.position for row in self._rows], plugins[0])
        else:
            step = model.embed_step(tokens, plugins)
            mask = cache.begin(None, device=model.device)
            positions = torch.tensor([[row.position] for row in self._rows], device=model.device)
            logits = model.forward(step, mask, plugins, cache, positions, last_only=True)[:, -1]
            cache.commit()
        for row in self._rows:
            row.position += 1
        self._retain(self._emit(self._rows, logits))

    def _emit(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token, stream it, finish rows that are done; returns rows to keep."""
        model = self.model
        chosen = model.choose_tokens(
            logits, [(row.job.request.constrain_vq, row.job.generated) for row in rows]
        )
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
            token, logprob = chosen[i]
            job.generated.append(token)
            job.logprobs.append(logprob)
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

    def _drop_finished_jobs(self) -> None:
        """Rows whose client went away (cancelled) leave before the next step is computed."""
        for row in self._rows:
            if row.job.cancelled:
                row.job._finish(None, RequestCancelled("cancelled"))
        self._retain([i for i, row in enumerate(self._rows) if not row.job.cancelled])

    def _retain(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep``; the cache refills vacated slots from the end, so the rows are
        reordered to follow their slots."""
        if len(keep) == len(self._rows) or self._cache is None:
            return
        order = self._cache.retain(keep)
        self._rows = [self._rows[i] for i in order]

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
                        if self._fixed is not None:
                            self._fixed.forget(key)
