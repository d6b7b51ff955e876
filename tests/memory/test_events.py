from __future__ import annotations

import threading
import time

import pytest

from memory.events import InProcessJobEvents, JobEvents, RedisJobEvents


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.services)])
def events(request: pytest.FixtureRequest) -> JobEvents:
    if request.param == "in-process":
        return InProcessJobEvents()
    return RedisJobEvents(request.getfixturevalue("redis_client"), prefix=request.getfixturevalue("prefix"))


def test_history_keeps_order_and_data_per_job(events: JobEvents) -> None:
    events.publish(7, "queued")
    events.publish(7, "progress", {"step": 1, "of": 10, "loss": 2.5})
    events.publish(8, "queued")
    history = events.history(7)
    assert [e.kind for e in history] == ["queued", "progress"]
    assert history[1].data == {"step": 1, "of": 10, "loss": 2.5}
    assert history[0].id != history[1].id
    assert [e.kind for e in events.history(8)] == ["queued"]
    assert events.history(9) == []


def test_a_follower_sees_history_then_live_events_until_the_end(events: JobEvents) -> None:
    events.publish(1, "queued")

    def run_job() -> None:
        for step in range(1, 4):
            time.sleep(0.05)
            events.publish(1, "progress", {"step": step})
        events.publish(1, "succeeded", {"adapter_version": "v2"})
        events.publish(1, "progress", {"step": 99})  # after the end: a follower has stopped

    threading.Thread(target=run_job).start()
    seen = list(events.follow(1, timeout_s=5))
    assert [e.kind for e in seen] == ["queued", "progress", "progress", "progress", "succeeded"]
    assert [e.data.get("step") for e in seen[1:4]] == [1, 2, 3]


def test_follow_resumes_after_a_given_event_and_stops_when_quiet(events: JobEvents) -> None:
    first = events.publish(2, "queued")
    events.publish(2, "progress", {"step": 1})
    started = time.monotonic()
    resumed = list(events.follow(2, after=first.id, timeout_s=0.3))
    assert [e.kind for e in resumed] == ["progress"]
    assert 0.25 < time.monotonic() - started < 3


@pytest.mark.services
def test_events_expire_and_are_capped_in_redis(redis_client, prefix: str) -> None:
    store = RedisJobEvents(redis_client, prefix=prefix)
    store.publish(3, "queued")
    assert 0 < redis_client.ttl(f"{prefix}3:events") <= 7 * 24 * 3600
