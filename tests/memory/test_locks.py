from __future__ import annotations

import multiprocessing
import time

import pytest

from memory.cache import make_redis
from memory.locks import PROMOTION_LOCK, InProcessLocks, LockBusy, Locks, RedisLocks, hold


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.services)])
def locks(request: pytest.FixtureRequest) -> Locks:
    if request.param == "in-process":
        return InProcessLocks()
    return RedisLocks(request.getfixturevalue("redis_client"), prefix=request.getfixturevalue("prefix"))


def test_one_holder_at_a_time_and_only_the_holder_releases(locks: Locks) -> None:
    token = locks.acquire(PROMOTION_LOCK, ttl_s=5)
    assert token
    assert locks.acquire(PROMOTION_LOCK, ttl_s=5) is None
    assert not locks.release(PROMOTION_LOCK, "not-the-token")
    assert locks.acquire(PROMOTION_LOCK, ttl_s=5) is None, "a wrong token freed nothing"
    assert locks.release(PROMOTION_LOCK, token)
    assert not locks.release(PROMOTION_LOCK, token), "releasing twice is a no-op"
    assert locks.acquire(PROMOTION_LOCK, ttl_s=5)


def test_an_expired_holder_cannot_free_the_next_holders_lock(locks: Locks) -> None:
    stale = locks.acquire("l", ttl_s=0.2)
    time.sleep(0.3)
    fresh = locks.acquire("l", ttl_s=5)
    assert fresh and fresh != stale
    assert not locks.release("l", stale)
    assert not locks.extend("l", stale, 5)
    assert locks.acquire("l", ttl_s=5) is None


def test_extend_keeps_the_lock_past_its_first_expiry(locks: Locks) -> None:
    token = locks.acquire("l", ttl_s=0.3)
    time.sleep(0.15)
    assert locks.extend("l", token, 1.0)
    time.sleep(0.3)
    assert locks.acquire("l", ttl_s=1) is None


def test_hold_waits_then_gives_up_with_lockbusy(locks: Locks) -> None:
    with hold(locks, "l", ttl_s=5):
        started = time.monotonic()
        with pytest.raises(LockBusy), hold(locks, "l", ttl_s=5, wait_s=0.2):
            pass
        assert time.monotonic() - started >= 0.2
    with hold(locks, "l", ttl_s=5) as token:
        assert token


def _contend(url: str, prefix: str, results) -> None:
    locks = RedisLocks(make_redis(url), prefix=prefix)
    for _ in range(20):
        token = locks.acquire(PROMOTION_LOCK, ttl_s=5)
        if token:
            results.put(("got", time.monotonic()))
            time.sleep(0.01)
            results.put(("released", time.monotonic()))
            locks.release(PROMOTION_LOCK, token)
        time.sleep(0.002)


@pytest.mark.services
def test_processes_never_hold_the_promotion_lock_together(redis_url: str, prefix: str) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_contend, args=(redis_url, prefix, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    events = []
    while not results.empty():
        events.append(results.get())
    events.sort(key=lambda e: e[1])
    holders = 0
    for kind, _ in events:
        holders += 1 if kind == "got" else -1
        assert holders in (0, 1), "two processes held the lock at once"
    assert sum(1 for kind, _ in events if kind == "got") >= 3
