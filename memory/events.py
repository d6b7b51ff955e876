"""Fine-tune job progress: publish events, read a job's history, follow it live.

Redis streams carry both the history and the live feed, so a follower that reads the history and then
waits cannot miss an event published in between (plain PUBLISH/SUBSCRIBE would drop it). The durable
job state lives in SQL (``fine_tune_jobs``); these events are the progress bar, kept for a week.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import redis
from pydantic import BaseModel, Field

TERMINAL = frozenset({"succeeded", "rejected", "failed", "cancelled"})
RETENTION_S = 7 * 24 * 3600
MAX_EVENTS_PER_JOB = 10_000
BLOCK_SLICE_S = 1.0


class JobEvent(BaseModel):
    id: str = ""  # assigned by the store; orders events of one job
    kind: str = Field(min_length=1, max_length=64)  # e.g. queued, progress, metric, succeeded
    data: dict[str, Any] = Field(default_factory=dict)
    at: float = Field(default_factory=time.time)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL


class JobEvents(Protocol):
    def publish(self, job_id: int | str, kind: str, data: dict[str, Any] | None = None) -> JobEvent: ...
    def history(self, job_id: int | str) -> list[JobEvent]: ...
    def follow(
        self, job_id: int | str, after: str | None = None, timeout_s: float = 30.0
    ) -> Iterator[JobEvent]: ...


class RedisJobEvents:
    def __init__(self, client: redis.Redis, prefix: str = "ha:job:") -> None:
        self._client, self.prefix = client, prefix

    def _key(self, job_id: int | str) -> str:
        return f"{self.prefix}{job_id}:events"

    @staticmethod
    def _decode(entry_id: bytes | str, fields: dict) -> JobEvent:
        raw = fields.get(b"event", fields.get("event"))
        event = JobEvent.model_validate_json(raw)
        event.id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return event

    def publish(self, job_id: int | str, kind: str, data: dict[str, Any] | None = None) -> JobEvent:
        event = JobEvent(kind=kind, data=data or {})
        key = self._key(job_id)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"event": event.model_dump_json(exclude={"id"})}, maxlen=MAX_EVENTS_PER_JOB)
            pipe.expire(key, RETENTION_S)
            entry_id, _ = pipe.execute()
        event.id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return event

    def history(self, job_id: int | str) -> list[JobEvent]:
        return [self._decode(i, f) for i, f in self._client.xrange(self._key(job_id))]

    def follow(
        self, job_id: int | str, after: str | None = None, timeout_s: float = 30.0
    ) -> Iterator[JobEvent]:
        """Events after ``after`` (None = from the start), live, until a terminal event or a quiet
        ``timeout_s``."""
        last = after or "0-0"
        quiet_until = time.monotonic() + timeout_s
        while True:
            # Block in slices shorter than the client's socket timeout (memory.cache), which would
            # otherwise cut a long quiet wait as if Redis had stopped answering.
            left = quiet_until - time.monotonic()
            block_ms = max(1, int(min(left, BLOCK_SLICE_S) * 1000))
            answer = self._client.xread({self._key(job_id): last}, block=block_ms)
            if not answer:
                if time.monotonic() >= quiet_until:
                    return
                continue
            quiet_until = time.monotonic() + timeout_s
            for entry_id, fields in answer[0][1]:
                event = self._decode(entry_id, fields)
                last = event.id
                yield event
                if event.terminal:
                    return


class InProcessJobEvents:
    def __init__(self) -> None:
        self._events: dict[str, list[JobEvent]] = {}
        self._changed = threading.Condition()
        self._counter = 0

    def publish(self, job_id: int | str, kind: str, data: dict[str, Any] | None = None) -> JobEvent:
        with self._changed:
            self._counter += 1
            event = JobEvent(id=f"{self._counter}-0", kind=kind, data=json.loads(json.dumps(data or {})))
            events = self._events.setdefault(str(job_id), [])
            events.append(event)
            del events[:-MAX_EVENTS_PER_JOB]
            self._changed.notify_all()
        return event

    def history(self, job_id: int | str) -> list[JobEvent]:
        with self._changed:
            return [e.model_copy() for e in self._events.get(str(job_id), [])]

    def follow(
        self, job_id: int | str, after: str | None = None, timeout_s: float = 30.0
    ) -> Iterator[JobEvent]:
        seen = int(after.split("-")[0]) if after else 0
        while True:
            with self._changed:
                fresh = [e for e in self._events.get(str(job_id), []) if int(e.id.split("-")[0]) > seen]
                if not fresh and not self._changed.wait(timeout_s):
                    return
            for event in fresh:
                seen = int(event.id.split("-")[0])
                yield event.model_copy()
                if event.terminal:
                    return
