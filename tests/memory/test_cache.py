"""A real Redis round-trip (TEST_REDIS_URL)."""

from __future__ import annotations

import uuid

import pytest

from memory.cache import make_redis

pytestmark = pytest.mark.services


def test_redis_round_trip(redis_url: str) -> None:
    client = make_redis(redis_url)
    key = f"healthagent:test:{uuid.uuid4().hex}"
    try:
        assert client.ping() is True
        assert client.set(key, "value", ex=60) is True
        assert client.get(key) == b"value"
        assert 0 < client.ttl(key) <= 60
        assert client.delete(key) == 1
        assert client.get(key) is None
    finally:
        client.delete(key)
        client.close()


def test_no_url_is_an_explicit_error() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        make_redis("")
