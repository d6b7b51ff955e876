from __future__ import annotations

import threading
import time

import pytest

from memory.ratelimit import InProcessTokenBucket, RateLimiter, RedisTokenBucket


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.services)])
def make_bucket(request: pytest.FixtureRequest):
    if request.param == "in-process":
        return InProcessTokenBucket
    client, key_prefix = request.getfixturevalue("redis_client"), request.getfixturevalue("prefix")
    return lambda capacity, rate: RedisTokenBucket(client, capacity, rate, prefix=key_prefix)


def test_burst_then_denied_with_the_wait_until_a_token(make_bucket) -> None:
    bucket: RateLimiter = make_bucket(3, 2.0)  # 3 at once, then one every 0.5 s
    assert [bucket.acquire("u1").allowed for _ in range(3)] == [True, True, True]
    denied = bucket.acquire("u1")
    assert not denied.allowed
    assert 0.3 < denied.retry_after_s <= 0.5
    assert bucket.acquire("u2").allowed, "another user's bucket is untouched"
    time.sleep(denied.retry_after_s + 0.05)
    assert bucket.acquire("u1").allowed
    assert not bucket.acquire("u1").allowed


def test_refill_never_exceeds_capacity(make_bucket) -> None:
    bucket = make_bucket(2, 50.0)
    bucket.acquire("u")
    time.sleep(0.2)  # would be 10 tokens without the cap
    assert [bucket.acquire("u").allowed for _ in range(3)] == [True, True, False]


def test_a_cost_above_capacity_can_never_pass(make_bucket) -> None:
    decision = make_bucket(2, 1.0).acquire("u", cost=3)
    assert not decision.allowed and decision.retry_after_s == float("inf")


def test_concurrent_callers_get_exactly_the_burst(make_bucket) -> None:
    bucket = make_bucket(10, 0.001)  # no meaningful refill during the test
    results: list[bool] = []
    lock = threading.Lock()

    def call() -> None:
        allowed = bucket.acquire("shared").allowed
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=call) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 10 and len(results) == 40


@pytest.mark.services
def test_replicas_share_one_bucket_through_redis(redis_url: str, prefix: str) -> None:
    from memory.cache import make_redis

    replica_a = RedisTokenBucket(make_redis(redis_url), 4, 0.001, prefix=prefix)
    replica_b = RedisTokenBucket(make_redis(redis_url), 4, 0.001, prefix=prefix)
    allowed = [replica.acquire("u").allowed for replica in (replica_a, replica_b) * 3]
    assert allowed == [True, True, True, True, False, False]
    client = make_redis(redis_url)
    ttl = client.pttl(prefix + "u")
    assert 0 < ttl, "an idle bucket expires instead of staying in Redis forever"


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        InProcessTokenBucket(0, 1.0)
    with pytest.raises(ValueError):
        InProcessTokenBucket(5, 0)
