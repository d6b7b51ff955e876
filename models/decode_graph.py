"""Decode steps of fixed shape, recorded once as CUDA graphs and replayed.

Why: at batch 1 a GPU decode step is bound by launching kernels, not by reading weights. HealthGPT-M3's
step is some 1,500 small kernels (32 layers of attention, MLP and the H-LoRA products of every adapted
linear), each queued from Python through transformers' modules, so the device idles between them (the
engine's step measured 4.4% of the HBM bound on an H200). A CUDA graph queues the whole step with one
launch. A graph replays fixed addresses and shapes, which the engine's ordinary step does not have: it
slices the cache's live window (one column longer every step) and routes rows to plugins by index.

The fixed step keeps everything in place: it attends over the cache's whole capacity under a mask
(``SlotCache.begin_fixed``), writes its column through a device index (``SlotCache.write_at``), and the
batch is padded to a bucket (1, 2, 4, 8 … rows; padding rows run in free slots and are dropped). It
serves a batch whose rows share one plugin (batch 1, image generation, a burst of one kind); a batch
mixing plugins takes the ordinary step. One recording per (plugin, bucket) over the cache's current
buffers: a regrid (the cache grows, O(log) times per burst) or a plugin's removal drops the recordings.

On a CPU there are no graphs: the same fixed step runs eagerly (tests check it against the ordinary
step, and that it reads nothing back to the host, which a recording could not hold). It costs more
than the ordinary step there (attention over the whole capacity), so the engine uses it on CUDA only
unless told otherwise (``EngineLimits.decode_graphs``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from models.contract import BatchModel
from models.kv_cache import SlotCache

log = logging.getLogger(__name__)


def bucket_for(rows: int, slots: int) -> int:
    """The recorded batch size that holds ``rows``: the next power of two, at most ``slots``."""
    bucket = 1
    while bucket < rows:
        bucket *= 2
    return min(bucket, slots)


@dataclass
class _Recording:
    """One fixed step's inputs and output, at addresses that stay put; ``graph`` where recorded."""

    embeds: torch.Tensor  # [bucket, 1, hidden]
    positions: torch.Tensor  # [bucket, 1]
    attend: torch.Tensor  # [bucket, capacity] bool
    write_at: torch.Tensor  # [1]: the column this step writes
    run: Callable[[], torch.Tensor]
    logits: torch.Tensor | None = None  # [bucket, vocab] once run
    graph: torch.cuda.CUDAGraph | None = None


class FixedDecode:
    """The engine's fixed-shape decode steps over one :class:`SlotCache` (see the module doc)."""

    def __init__(self, model: BatchModel, record: bool | None = None) -> None:
        self.model = model
        # Record CUDA graphs where the device has them; elsewhere run the fixed step as it is.
        self.record = model.device.type == "cuda" if record is None else record
        self._recordings: dict[tuple[str, int], _Recording] = {}
        self._cache: SlotCache | None = None
        self._generation: tuple[int, int, int] | None = None
        self._pool = torch.cuda.graph_pool_handle() if self.record else None
        self.steps = 0  # fixed steps taken (monitoring, tests)
        self.recorded = 0  # graphs recorded so far
        self.failed: str | None = None  # why recording was given up, if it was

    def step(
        self, cache: SlotCache, tokens: Sequence[int], positions: Sequence[int], plugin: str
    ) -> torch.Tensor:
        """Logits ``[rows, vocab]`` of one decode step of ``cache``'s running rows, all of ``plugin``;
        advances the cache like the ordinary step (``begin`` … ``commit``)."""
        rows = len(tokens)
        if rows != cache.rows:
            raise ValueError(f"{rows} tokens for {cache.rows} running rows")
        bucket = bucket_for(rows, cache.slots)
        attend, column = cache.begin_fixed(bucket, device=self.model.device)  # may regrid the buffers
        if cache is not self._cache or cache.generation != self._generation:
            self._recordings.clear()  # recorded over buffers that are gone
            self._cache, self._generation = cache, cache.generation
        key = (plugin, bucket)
        recording = self._recordings.get(key)
        fresh = recording is None
        if recording is None:
            recording = self._recordings[key] = self._new(cache, plugin, bucket, attend.shape[1])
        padded = list(tokens) + [tokens[0]] * (bucket - rows)
        recording.embeds.copy_(self.model.embed_step(padded, [plugin] * bucket))
        recording.positions.copy_(
            torch.tensor(list(positions) + [0] * (bucket - rows), device=self.model.device).unsqueeze(1)
        )
        recording.attend.copy_(attend)
        recording.write_at.fill_(column)
        try:
            if fresh and self.record and self.failed is None:
                self._graph(recording, cache)
            if recording.graph is not None:
                recording.graph.replay()
            else:
                recording.logits = self._eager(recording, cache)
        finally:
            cache.write_at = None
        cache.commit()
        self.steps += 1
        assert recording.logits is not None
        return recording.logits[:rows]

    def forget(self, plugin: str) -> None:
        """``plugin`` was removed from the model: its recordings point at freed weights."""
        for key in [key for key in self._recordings if key[0] == plugin]:
            del self._recordings[key]

    # -- recording ----------------------------------------------------------------------------------
    def _new(self, cache: SlotCache, plugin: str, bucket: int, capacity: int) -> _Recording:
        model, device = self.model, self.model.device
        embeds = model.embed_step([0] * bucket, [plugin] * bucket).clone()
        positions = torch.zeros(bucket, 1, dtype=torch.long, device=device)
        attend = torch.zeros(bucket, capacity, dtype=torch.bool, device=device)
        write_at = torch.zeros(1, dtype=torch.long, device=device)
        plugins = [plugin] * bucket

        lowest = torch.finfo(embeds.dtype).min

        def run() -> torch.Tensor:
            # A prepared 4-D mask goes through transformers as it is, so it is given additive (0 where a
            # row attends, the dtype's lowest elsewhere): what eager attention adds and SDPA accepts.
            bias = torch.zeros_like(attend, dtype=embeds.dtype).masked_fill_(~attend, lowest)
            logits = model.forward(embeds, bias[:, None, None, :], plugins, cache, positions, last_only=True)
            return logits[:, -1]

        return _Recording(embeds, positions, attend, write_at, run)

    def _eager(self, recording: _Recording, cache: SlotCache) -> torch.Tensor:
        cache.write_at = recording.write_at
        return recording.run()

    def _graph(self, recording: _Recording, cache: SlotCache) -> None:
        """Record ``recording`` as a CUDA graph. A warm-up on a side stream comes first (it computes this
        very step, so replaying it after is harmless). If recording fails, the fixed step runs eagerly from
        then on and the reason is kept (``failed``) and logged once."""
        cache.write_at = recording.write_at
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                recording.run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the engine's thread records while others may use the device (score, generate).
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                recording.logits = recording.run()
        except Exception as exc:  # noqa: BLE001 - any failure to record falls back to the eager step
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("decode steps are not recorded as CUDA graphs (%s); they run eagerly", self.failed)
            return
        recording.graph = graph
        self.recorded += 1
