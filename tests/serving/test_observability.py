"""Prometheus metrics, JSON logs and request ids (issue 13): the figures move as turns are answered,
every log line is one JSON object carrying the request id, and no patient's name or words reach the
logs during a consultation."""

from __future__ import annotations

import io
import json
import logging

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from ray.serve import context as serve_context
from sqlalchemy import select

from memory.db import transaction
from memory.records import Records
from memory.schema import AuditEntry, Role, User
from memory.users import Principal
from serving.observability import JsonFormatter
from tests.agents.scenarios.conftest import auth, new_consultation, png, say

RED_FLAG = "crushing chest pain spreading to my left arm, sweating, for 30 minutes"


def _samples(client: TestClient) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_metrics_follow_requests_turns_and_the_engine(sqlite_api) -> None:
    client, people = sqlite_api
    before = _samples(client)
    consultation = new_consultation(client, people.pam)
    assert say(client, people.pam, consultation, "I have had a dry cough for a week").status_code == 200
    assert say(client, people.pam, consultation, RED_FLAG).json()["escalated"] is True
    with client.stream(
        "POST",
        f"/v1/consultations/{consultation}/messages",
        json={"message": "and a mild headache"},
        headers={**auth(people.pam), "Accept": "text/event-stream"},
    ) as streamed:
        assert streamed.status_code == 200 and "event: done" in streamed.read().decode()
    client.get("/v1/reads/424242", headers=auth(people.dr_doe))
    after = _samples(client)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    messages = "/v1/consultations/{consultation_id}/messages"
    assert grew("healthagent_http_request_duration_seconds_count", route=messages, status="200") == 3
    assert (
        grew("healthagent_http_request_duration_seconds_count", route="/v1/reads/{read_id}", status="404")
        == 1
    )
    assert _value(after, "healthagent_http_requests_in_flight") >= 1  # the scrape itself
    assert grew("healthagent_escalations_total") == 1
    assert grew("healthagent_triage_total", level="emergency") == 1
    assert (
        grew("healthagent_model_answers_total", plugin="comprehension", adapter_version="tiny-seed0-v1") >= 1
    )
    assert grew("healthagent_stream_time_to_first_token_seconds_count") == 1
    # The engine's own figures (it runs in this process here).
    assert grew("healthagent_engine_tokens_generated_total") > 0
    assert grew("healthagent_engine_batch_size_count") > 0 and grew("healthagent_engine_batch_size_sum") > 0
    assert grew("healthagent_engine_time_to_first_token_seconds_count") > 0
    assert "healthagent_engine_queue_depth" in {name for name, _ in after}
    adapters = {
        dict(ls)["plugin"]: dict(ls)["adapter_version"]
        for n, ls in after
        if n == "healthagent_engine_adapter_info"
    }
    assert adapters["comprehension"] == "tiny-seed0-v1"
    assert _value(after, "healthagent_finetune_jobs", status="running") == 0
    # Labels name route templates, never a record's id.
    assert consultation not in client.get("/metrics").text
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def _zelda(client: TestClient) -> str:
    with transaction(client.app.state.services.sessions) as session:
        admin = session.scalar(select(User).where(User.role == Role.admin))
        records = Records(session, Principal(admin.id, admin.name, Role.admin))
        user, token = records.create_user("zelda_quixote", Role.patient)
        records.create_patient("Zelda Quixote-Marsh", user_id=user.id)
    return token


def test_logs_are_json_lines_with_request_ids_and_no_phi(sqlite_api) -> None:
    client, people = sqlite_api
    token = _zelda(client)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    words = "My knee has ached since the pomegranate festival"
    try:
        consultation = new_consultation(client, token)
        answered = client.post(
            f"/v1/consultations/{consultation}/messages",
            json={"message": words},
            headers={**auth(token), "X-Request-ID": "phi-turn-1"},
        )
        assert answered.status_code == 200, answered.text
        say(client, token, consultation, f"{RED_FLAG}, pomegranate")
        client.post(
            f"/v1/consultations/{consultation}/messages",
            data={"message": f"{words} (photo)"},
            files={"files": ("zelda_knee.png", png(), "image/png")},
            headers=auth(token),
        )
        with client.stream(
            "POST",
            f"/v1/consultations/{consultation}/messages",
            json={"message": f"{words} again"},
            headers={**auth(token), "Accept": "text/event-stream"},
        ) as streamed:
            streamed.read()
        client.post("/v1/chat", json={"message": "pomegranate " * 50_000}, headers=auth(token))  # refused
        client.post("/v1/feedback", json={"message_id": 1, "kind": "correction", "payload": {"text": words}})
    finally:
        root.removeHandler(handler)
    lines = captured.getvalue().splitlines()
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message", "request_id"} <= set(record)
    access = [r for r in records if r["logger"] == "healthagent.access"]
    turn = next(r for r in access if r["request_id"] == "phi-turn-1")
    assert turn["route"] == "/v1/consultations/{consultation_id}/messages"
    assert turn["status"] == 200 and turn["duration_ms"] > 0 and turn["method"] == "POST"
    text = captured.getvalue().lower()
    for phi in (
        "zelda",
        "quixote",
        "marsh",
        "pomegranate",
        "knee",
        "chest pain",
        people.pam_patient_id and "pam",
    ):
        assert phi not in text, f"{phi!r} reached the logs"


def test_the_request_id_reaches_the_audit_rows(sqlite_api) -> None:
    client, people = sqlite_api
    consultation = new_consultation(client, people.pam)
    client.get(
        f"/v1/consultations/{consultation}", headers={**auth(people.pam), "X-Request-ID": "audit-me-7"}
    )
    with client.app.state.services.sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
    mine = [row for row in rows if row.detail.get("request_id") == "audit-me-7"]
    assert mine and all(row.resource_id == consultation for row in mine)
    # The chain still verifies with the ids in it.
    with transaction(client.app.state.services.sessions) as session:
        admin = session.scalar(select(User).where(User.role == Role.admin))
        assert Records(session, Principal(admin.id, admin.name, Role.admin)).verify_audit().ok


def test_behind_ray_serve_the_request_id_is_serves_own(sqlite_api) -> None:
    """Serve's proxy gives each request an id, logs with it, passes it on with every handle call to the
    model replicas and sends it back itself; the gateway adopts it rather than making another."""
    client, people = sqlite_api
    app = client.app

    async def as_serve_replica(scope, receive, send):
        serve_context._serve_request_context.set(serve_context._RequestContext(request_id="serve-req-42"))
        await app(scope, receive, send)

    replica = TestClient(as_serve_replica, raise_server_exceptions=False)
    response = replica.get("/v1/reads/99", headers=auth(people.dr_doe))
    assert response.json()["request_id"] == "serve-req-42"
    assert "X-Request-ID" not in response.headers  # the proxy adds it; twice would be wrong
