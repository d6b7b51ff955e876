"""Named, expiring locks; the adapter-promotion lock is one. Redis across processes, or in-process.

A holder gets a random token; only that token releases or extends the lock (compare-and-delete), so a
holder whose lock already expired cannot free the next holder's lock. The expiry keeps a crashed holder
from blocking promotions forever.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import redis

PROMOTION_LOCK = "adapter-promotion"


class LockBusy(RuntimeError):
    """Someone else holds the lock."""


class Locks(Protocol):
    def acquire(self, name: str, ttl_s: float) -> str | None: ...
    def release(self, name: str, token: str) -> bool: ...
    def extend(self, name: str, token: str, ttl_s: float) -> bool: ...


_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def _ttl_ms(ttl_s: float) -> int:
    if ttl_s <= 0:
        raise ValueError("a lock needs a positive ttl")
    return max(1, int(ttl_s * 1000))


class RedisLocks:
    def __init__(self, client: redis.Redis, prefix: str = "ha:lock:") -> None:
        self._client, self.prefix = client, prefix
        self._release = client.register_script(_RELEASE_LUA)
        self._extend = client.register_script(_EXTEND_LUA)

    def acquire(self, name: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(16)
        ok = self._client.set(self.prefix + name, token, nx=True, px=_ttl_ms(ttl_s))
        return token if ok else None

    def release(self, name: str, token: str) -> bool:
        return bool(self._release(keys=[self.prefix + name], args=[token]))

    def extend(self, name: str, token: str, ttl_s: float) -> bool:
        return bool(self._extend(keys=[self.prefix + name], args=[token, _ttl_ms(ttl_s)]))


class InProcessLocks:
    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}  # name -> (token, monotonic deadline)
        self._lock = threading.Lock()

    def _current(self, name: str) -> tuple[str, float] | None:
        held = self._held.get(name)
        if held is not None and held[1] <= time.monotonic():
            del self._held[name]
            return None
        return held

    def acquire(self, name: str, ttl_s: float) -> str | None:
        deadline = time.monotonic() + _ttl_ms(ttl_s) / 1000
        with self._lock:
            if self._current(name) is not None:
                return None
            token = secrets.token_hex(16)
            self._held[name] = (token, deadline)
            return token

    def release(self, name: str, token: str) -> bool:
        with self._lock:
            held = self._current(name)
            if held is None or held[0] != token:
                return False
            del self._held[name]
            return True

    def extend(self, name: str, token: str, ttl_s: float) -> bool:
        with self._lock:
            held = self._current(name)
            if held is None or held[0] != token:
                return False
            self._held[name] = (token, time.monotonic() + _ttl_ms(ttl_s) / 1000)
            return True


@contextmanager
def hold(locks: Locks, name: str, ttl_s: float, wait_s: float = 0.0) -> Iterator[str]:
    """Hold ``name`` for the block; waits up to ``wait_s`` for it, else raises :class:`LockBusy`."""
    deadline = time.monotonic() + wait_s
    while (token := locks.acquire(name, ttl_s)) is None:
        if time.monotonic() >= deadline:
            raise LockBusy(f"lock {name!r} is held by another process; try again later")
        time.sleep(0.05)
    try:
        yield token
    finally:
        locks.release(name, token)
