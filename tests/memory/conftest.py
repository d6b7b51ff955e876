"""Both implementations of each shared-state backend, Redis ones under a per-test key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from memory.cache import make_redis
from memory.db import make_engine, make_session_factory
from memory.migrate import upgrade
from tests.conftest import service_unavailable


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = make_redis(redis_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at TEST_REDIS_URL is unreachable: {exc}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"test:{uuid.uuid4().hex[:12]}:"
    yield value
    client = make_redis(redis_url)
    keys = list(client.scan_iter(match=value + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def sessions(database_url: str):
    """Sessions on a freshly migrated database (each test: SQLite and PostgreSQL)."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()
