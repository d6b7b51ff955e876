"""The shared-state backends (rate limits, job events, locks): Redis, or in-process for one process.

Which one is explicit: a Redis URL gives Redis (and an unreachable Redis is an error, never a quiet
switch to in-process state that other replicas would not share); no URL gives in-process state, which
only the embedded profile may ask for.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from memory.cache import make_redis
from memory.events import InProcessJobEvents, JobEvents, RedisJobEvents
from memory.locks import InProcessLocks, Locks, RedisLocks
from memory.ratelimit import InProcessTokenBucket, RateLimiter, RedisTokenBucket


@dataclass
class Backends:
    rate_limiter: RateLimiter
    events: JobEvents
    locks: Locks
    redis: redis.Redis | None

    @property
    def kind(self) -> str:
        return "redis" if self.redis is not None else "in-process"

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()


def make_backends(
    redis_url: str, *, in_process_allowed: bool, rate_capacity: float, rate_refill_per_s: float
) -> Backends:
    if not redis_url:
        if not in_process_allowed:
            raise ValueError("no redis_url: in-process rate limits, events and locks are for embedded use")
        return Backends(
            rate_limiter=InProcessTokenBucket(rate_capacity, rate_refill_per_s),
            events=InProcessJobEvents(),
            locks=InProcessLocks(),
            redis=None,
        )
    client = make_redis(redis_url)
    client.ping()  # fail at start, loudly, rather than on the first request
    return Backends(
        rate_limiter=RedisTokenBucket(client, rate_capacity, rate_refill_per_s),
        events=RedisJobEvents(client),
        locks=RedisLocks(client),
        redis=client,
    )
