"""Rate limiting: a token bucket in Redis (shared by every gateway replica) or in-process.

A bucket holds up to ``capacity`` tokens and regains ``refill_per_s`` tokens per second; a request
costs one token (or more). When the bucket is short, the answer says how long until it is not.
``peek`` asks the same question without taking anything: the gateway charges only failed logins to a
client address, but refuses that address before checking its next token once its bucket is empty.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    remaining: float
    retry_after_s: float  # 0 when allowed; otherwise the wait until ``cost`` tokens are there


class RateLimiter(Protocol):
    def acquire(self, key: str, cost: float = 1.0) -> RateDecision: ...

    def peek(self, key: str, cost: float = 1.0) -> RateDecision: ...


def _check_params(capacity: float, refill_per_s: float) -> None:
    if capacity < 1 or refill_per_s <= 0:
        raise ValueError("a token bucket needs capacity >= 1 and refill_per_s > 0")


def _take(tokens: float, cost: float, refill_per_s: float) -> tuple[bool, float, float]:
    """Shared arithmetic of both implementations: (allowed, tokens left, seconds to wait)."""
    if tokens >= cost:
        return True, tokens - cost, 0.0
    return False, tokens, (cost - tokens) / refill_per_s


class InProcessTokenBucket:
    """For the embedded profile: one process, one lock."""

    # Keys are client addresses too: past this many, buckets that have refilled (the same as absent)
    # are dropped, so a flood from many addresses cannot grow the table without bound.
    MAX_KEYS = 100_000

    def __init__(self, capacity: float, refill_per_s: float) -> None:
        _check_params(capacity, refill_per_s)
        self.capacity, self.refill_per_s = float(capacity), float(refill_per_s)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic stamp)
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - stamp) * self.refill_per_s)

    def acquire(self, key: str, cost: float = 1.0) -> RateDecision:
        if cost > self.capacity:
            return RateDecision(False, 0.0, math.inf)
        now = time.monotonic()
        with self._lock:
            allowed, tokens, wait = _take(self._tokens(key, now), cost, self.refill_per_s)
            if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
                self._prune(now)
            self._buckets[key] = (tokens, now)
        return RateDecision(allowed, tokens, wait)

    def peek(self, key: str, cost: float = 1.0) -> RateDecision:
        if cost > self.capacity:
            return RateDecision(False, 0.0, math.inf)
        with self._lock:
            tokens = self._tokens(key, time.monotonic())
        allowed, _, wait = _take(tokens, cost, self.refill_per_s)
        return RateDecision(allowed, tokens, wait)

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._tokens(k, now) >= self.capacity]
        for key in full:
            del self._buckets[key]


# Refill and take in one atomic step on the server, timed by the server's clock so that replicas with
# skewed clocks share one notion of time. The key expires once a full bucket would have refilled.
_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local take = ARGV[4] ~= '0'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil then tokens = capacity; stamp = now end
tokens = math.min(capacity, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  if take then tokens = tokens - cost end
  allowed = 1
else
  wait = (cost - tokens) / rate
end
if take then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
end
return {allowed, tostring(tokens), tostring(wait)}
"""


class RedisTokenBucket:
    """For production: every gateway replica draws from the same bucket per user."""

    def __init__(
        self, client: redis.Redis, capacity: float, refill_per_s: float, prefix: str = "ha:rate:"
    ) -> None:
        _check_params(capacity, refill_per_s)
        self.capacity, self.refill_per_s, self.prefix = float(capacity), float(refill_per_s), prefix
        self._script = client.register_script(_BUCKET_LUA)

    def acquire(self, key: str, cost: float = 1.0) -> RateDecision:
        return self._run(key, cost, take=True)

    def peek(self, key: str, cost: float = 1.0) -> RateDecision:
        return self._run(key, cost, take=False)

    def _run(self, key: str, cost: float, *, take: bool) -> RateDecision:
        if cost > self.capacity:
            return RateDecision(False, 0.0, math.inf)
        allowed, tokens, wait = self._script(
            keys=[self.prefix + key], args=[self.capacity, self.refill_per_s, cost, 1 if take else 0]
        )
        return RateDecision(bool(int(allowed)), float(tokens), float(wait))
