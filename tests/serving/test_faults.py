"""Stores restarted under load (the in-process API on a private PostgreSQL and a private Redis): while a
store is down every answer is 503 with Retry-After (never another 5xx, never a hang), the API recovers on
its own once the store is back, and no write it acknowledged is lost. The full-service version, with
replicas killed too, is ``python -m bench.faults``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sql_errors
from sqlalchemy.engine import make_url

from bench.faults import Ledger, PrivatePostgres, PrivateRedis, missing_binaries
from serving.problems import problem_for
from tests.agents.scenarios.conftest import auth
from tests.conftest import service_unavailable
from tests.serving.conftest import open_api

DOWN_S = 2.0
MAX_ANSWER_S = 15.0  # no request may take longer than this, outage or not


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    reason = missing_binaries()
    if reason:
        service_unavailable(reason)
    pg = PrivatePostgres()
    try:
        cache = PrivateRedis(tmp_path_factory.mktemp("redis"))
    except Exception:
        pg.close()
        raise
    yield pg, cache
    cache.close()
    pg.close()


def _fresh_database(pg: PrivatePostgres) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return make_url(pg.url).set(database=name).render_as_string(hide_password=False)


@dataclass
class Api:
    client: TestClient
    token: str
    database_url: str
    ledger: Ledger = field(default_factory=Ledger)


@pytest.fixture
def api(stores, tmp_path: Path, tiny_model) -> Iterator[Api]:
    pg, cache = stores
    url = _fresh_database(pg)
    client, services, people = open_api(tmp_path, url, tiny_model, redis_url=cache.url)
    yield Api(client, people.pam, url)
    client.__exit__(None, None, None)
    services.close()


@dataclass
class Answer:
    op: str
    started: float
    ended: float
    status: int | str
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return isinstance(self.status, int) and 200 <= self.status < 300


def _call(op: str, send: Callable[[], httpx.Response], answers: list[Answer]) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response = send()
    except Exception as exc:  # noqa: BLE001 - recorded: a transport error is a failure too
        answers.append(Answer(op, started, time.monotonic(), type(exc).__name__, None))
        return None
    answers.append(
        Answer(op, started, time.monotonic(), response.status_code, response.headers.get("retry-after"))
    )
    return response


def _round(api: Api, answers: list[Answer], state: dict) -> None:
    """One patient step: a consultation when there is none, a message, feedback on its answer, a read."""
    client, headers, ledger = api.client, auth(api.token), api.ledger
    if state.get("consultation") is None:
        response = _call("open", lambda: client.post("/v1/consultations", json={}, headers=headers), answers)
        if response is not None and response.status_code == 201:
            state["consultation"] = response.json()["id"]
            ledger.add("consultations", state["consultation"])
        return
    path = f"/v1/consultations/{state['consultation']}"
    body = {"message": "a dry cough for a week, no fever"}
    response = _call("message", lambda: client.post(f"{path}/messages", json=body, headers=headers), answers)
    if response is not None and response.status_code == 200:
        answer = response.json()["message_id"]
        ledger.add("messages", answer)
        rating = {"message_id": answer, "kind": "rating", "payload": {"stars": 4}}
        response = _call(
            "feedback", lambda: client.post("/v1/feedback", json=rating, headers=headers), answers
        )
        if response is not None and response.status_code == 201:
            ledger.add("feedback", response.json()["id"])
    _call("read", lambda: client.get(path, headers=headers), answers)


def _under_load(
    api: Api, fault: Callable[[], None], stop: Callable[[], None]
) -> tuple[list[Answer], float, float]:
    """Writes from a background client while ``fault`` (the store stops) and ``stop`` (it is back) run;
    the answers, when the store went down and when it was back."""
    answers: list[Answer] = []
    done = threading.Event()

    def writer() -> None:
        state: dict = {}
        while not done.is_set():
            before = len(answers)
            _round(api, answers, state)
            if any(not a.ok for a in answers[before:]):
                time.sleep(0.1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        warm = time.monotonic() + 60  # the model's first answers are slow: load starts after them
        while len(api.ledger.acknowledged["messages"]) < 3 and time.monotonic() < warm:
            time.sleep(0.1)
        down_at = time.monotonic()
        fault()
        time.sleep(DOWN_S)
        # One client sends its requests in turn, and a turn in flight may outlast a short outage on a
        # loaded machine: keep the store down until a request has met it, then a little longer, so the
        # checked window below holds requests sent while it was down.
        met = time.monotonic() + 30
        while time.monotonic() < met and not any(a.status == 503 and a.started >= down_at for a in answers):
            time.sleep(0.1)
        time.sleep(1.5)
        stop()
        back_at = time.monotonic()
        deadline = back_at + 30
        while time.monotonic() < deadline:  # until every kind of request has succeeded again
            ops = {a.op for a in answers if a.ok and a.started > back_at}
            if {"message", "feedback", "read"} <= ops:
                break
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the writer hung"
    return answers, down_at, back_at


def _check(api: Api, answers: list[Answer], down_at: float, back_at: float) -> dict:
    # Sent while the store was down (less the last second, where a client's retries may meet it back).
    outage = [a for a in answers if down_at <= a.started <= back_at - 1.0]
    refused = [a for a in answers if a.status == 503]
    failed = [a for a in answers if not a.ok and a.status != 503]
    slow = [a for a in answers if a.ended - a.started > MAX_ANSWER_S]
    recovered = {
        op: min(
            (a.ended - back_at for a in answers if a.ok and a.op == op and a.started >= back_at), default=None
        )
        for op in ("message", "feedback", "read")
    }
    figures = {
        "answers": len(answers),
        "during_outage": len(outage),
        "503": len(refused),
        "other_failures": [(a.op, a.status) for a in failed],
        "recovery_s": recovered,
        "acknowledged": api.ledger.counts(),
    }
    print(f"\n{figures}")
    assert not failed, f"failures other than 503: {figures['other_failures']}"
    assert not slow, f"answers slower than {MAX_ANSWER_S} s: {[(a.op, a.ended - a.started) for a in slow]}"
    assert outage and all(a.status == 503 for a in outage), [(a.op, a.status) for a in outage]
    assert all(a.retry_after and int(a.retry_after) > 0 for a in refused), "a 503 without Retry-After"
    assert all(value is not None for value in recovered.values()), f"not recovered: {recovered}"
    assert min(api.ledger.counts().values()) > 0, "nothing was acknowledged"
    lost = api.ledger.lost(api.database_url)
    assert sum(lost.values()) == 0, f"acknowledged writes lost: {lost}"
    return figures


@pytest.mark.services
def test_postgresql_restart_under_load(api: Api, stores) -> None:
    pg, _ = stores
    answers, down_at, back_at = _under_load(api, lambda: pg.stop("immediate"), pg.start)
    _check(api, answers, down_at, back_at)


@pytest.mark.services
def test_redis_restart_under_load(api: Api, stores) -> None:
    _, cache = stores
    answers, down_at, back_at = _under_load(api, cache.kill, cache.start)
    _check(api, answers, down_at, back_at)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (
            sql_errors.OperationalError(
                "SELECT 1", {}, psycopg.OperationalError("server closed the connection")
            ),
            503,
        ),
        (sql_errors.TimeoutError("QueuePool limit reached"), 503),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), 503),
        (redis.ConnectionError("Connection refused"), 503),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), 503),
        (sql_errors.ProgrammingError("SELECT nope", {}, psycopg.errors.UndefinedTable("no such table")), 500),
        (redis.ResponseError("WRONGTYPE"), 500),
    ],
)
def test_a_store_that_is_down_answers_503_with_retry_after(error: Exception, status: int) -> None:
    """Only an unreachable store is a 503 (retry later); a store that answered with an error is ours."""
    answer = problem_for(error)
    assert answer.status_code == status
    assert ("retry-after" in answer.headers) is (status == 503)
