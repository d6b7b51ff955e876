"""Redis connections. An empty URL means the embedded profile: no Redis at all."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

TIMEOUT_S = 2
# A command whose connection broke (Redis restarted) is retried on a fresh one: the first request after a
# restart succeeds. Few, short retries: while Redis is down a request is refused (503) within about
# 3 x TIMEOUT_S, where redis-py's default (10 retries) would hold it much longer.
RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


def make_redis(url: str) -> redis.Redis:
    """A client for ``url``; fails fast instead of hanging when Redis is unreachable."""
    if not url:
        raise ValueError("no redis_url configured")
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=TIMEOUT_S,
        socket_timeout=TIMEOUT_S,
        health_check_interval=30,
        retry=RETRY,
    )


def redis_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says Redis could not be reached, went away or is still loading its data: a retry
    later succeeds (BusyLoadingError is a ConnectionError)."""
    return isinstance(error, redis.ConnectionError | redis.TimeoutError)
