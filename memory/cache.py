"""Redis connections. An empty URL means the embedded profile: no Redis at all."""

from __future__ import annotations

import redis


def make_redis(url: str) -> redis.Redis:
    """A client for ``url``; fails fast (5 s) instead of hanging when Redis is unreachable."""
    if not url:
        raise ValueError("no redis_url configured")
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5, health_check_interval=30)
