from __future__ import annotations

import pytest

from memory.backends import make_backends


def test_in_process_state_is_for_embedded_use_only() -> None:
    backends = make_backends("", in_process_allowed=True, rate_capacity=2, rate_refill_per_s=1)
    assert backends.kind == "in-process" and backends.rate_limiter.acquire("u").allowed
    with pytest.raises(ValueError, match="embedded"):
        make_backends("", in_process_allowed=False, rate_capacity=2, rate_refill_per_s=1)


def test_an_unreachable_redis_is_an_error_not_a_fallback() -> None:
    with pytest.raises(Exception, match=r"(?i)connect"):
        make_backends("redis://127.0.0.1:1/0", in_process_allowed=True, rate_capacity=2, rate_refill_per_s=1)


@pytest.mark.services
def test_a_redis_url_gives_redis_backends(redis_url: str) -> None:
    backends = make_backends(redis_url, in_process_allowed=False, rate_capacity=2, rate_refill_per_s=1)
    try:
        assert backends.kind == "redis"
    finally:
        backends.close()
