"""The batching engine's figures from inside a Ray Serve model replica, published as Ray metrics.

A gateway's ``/metrics`` sees only its own process; the engine runs in the HealthGPT replicas. Each
replica therefore publishes the engine's figures itself, every few seconds, through ``ray.util.metrics``:
Ray's metrics agent on each node serves them in Prometheus format on the node's metrics export port,
named ``ray_healthagent_engine_*`` and tagged with the model, the replica and (Ray's own tags) the node.
Counters are published as the increase since the last publication, so they add up across replicas.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from ray.util.metrics import Counter, Gauge

from models.engine import EngineFigures

log = logging.getLogger(__name__)
PREFIX = "healthagent_engine"
_TAGS = ("model", "replica")


class _HasFigures(Protocol):
    def figures(self) -> EngineFigures: ...


class ReplicaEngineMetrics:
    """Publishes one engine's figures every ``interval_s`` from a daemon thread until ``stop()``."""

    def __init__(self, engine: _HasFigures, model: str, replica: str, interval_s: float = 5.0) -> None:
        self.engine = engine
        self.tags = {"model": model, "replica": replica}
        self.interval_s = interval_s
        self._queue = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for a batch slot.", _TAGS)
        self._rows = Gauge(f"{PREFIX}_active_rows", "Rows in the running batch now.", _TAGS)
        self._tokens = Counter(f"{PREFIX}_tokens_generated", "Tokens generated (rate: tokens/s).", _TAGS)
        self._passes = Counter(f"{PREFIX}_forward_passes", "Forward passes of the batch.", _TAGS)
        self._batch_rows = Counter(
            f"{PREFIX}_batch_rows",
            "Rows summed over forward passes (divided by passes: mean batch size).",
            _TAGS,
        )
        self._first_tokens = Counter(f"{PREFIX}_first_tokens", "Requests that got a first token.", _TAGS)
        self._first_token_s = Counter(
            f"{PREFIX}_first_token_seconds",
            "Admission to first token, summed (divided by first tokens: mean time to first token).",
            _TAGS,
        )
        self._adapter = Gauge(
            f"{PREFIX}_adapter_info",
            "1 for the adapter version serving new requests of each plugin, 0 for one that did.",
            (*_TAGS, "plugin", "adapter_version"),
        )
        self._last: EngineFigures | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-metrics", daemon=True)

    def start(self) -> ReplicaEngineMetrics:
        self.publish()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.publish()
            except Exception:  # monitoring must never take the replica down
                log.warning("publishing engine metrics failed", exc_info=True)

    def publish(self) -> EngineFigures:
        now = self.engine.figures()
        last = self._last
        self._queue.set(now.queue_length, self.tags)
        self._rows.set(now.active_rows, self.tags)
        for counter, current, before in (
            (self._tokens, now.tokens_generated, last.tokens_generated if last else 0),
            (self._passes, now.forward_passes, last.forward_passes if last else 0),
            (self._batch_rows, now.batch_rows, last.batch_rows if last else 0),
            (self._first_tokens, now.first_tokens, last.first_tokens if last else 0),
            (self._first_token_s, now.first_token_s, last.first_token_s if last else 0.0),
        ):
            if current > before:  # Ray counters only go up; totals never fall within one engine
                counter.inc(current - before, self.tags)
        previous = last.plugins if last else {}
        for plugin, version in previous.items():
            if now.plugins.get(plugin) != version:
                self._adapter.set(0, {**self.tags, "plugin": plugin, "adapter_version": version})
        for plugin, version in now.plugins.items():
            self._adapter.set(1, {**self.tags, "plugin": plugin, "adapter_version": version})
        self._last = now
        return now
