"""What an error tells the caller (issue 13): problem+json with a human detail and the request id; no
internals; the same answer for an id that exists but is not the caller's as for one that does not;
security headers on every answer; the API docs work offline."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError
from sqlalchemy import select

from memory.schema import AuditEntry
from models.engine import InvalidRequest
from serving.observability import RequestObservability
from serving.problems import Problem, install_problem_handlers
from tests.agents.scenarios.conftest import auth, new_consultation, say
from tests.agents.scenarios.test_physician import upload_study

LEAKS = re.compile(r"\x1b|pid=|ip=|actor_id|0x[0-9a-f]{6}|10\.0\.3\.7|object at|ray::|Traceback")


def _ray_wrapped(cause: Exception) -> Exception:
    """``cause`` as a Serve handle call re-raises it from a model replica."""
    error = RayTaskError(
        "HealthGPTDeployment.ask",
        f'Traceback (most recent call last):\n  File "engine.py", line 9\nmodels.engine.{cause!r}',
        cause,
        proctitle="ray::HealthGPTDeployment.ask",
        pid=4242,
        ip="10.0.3.7",
        actor_repr="<serving.deployments.HealthGPTDeployment object at 0x7f3a2b1c4d50>",
        actor_id="6d0e4c1f8a0b2c3d4e5f60718293a4b5",
    )
    return error.as_instanceof_cause()


@pytest.fixture
def failing_app() -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(RequestObservability)

    @app.get("/ray")
    def ray_refusal() -> None:
        raise _ray_wrapped(InvalidRequest("prompt of 5000 tokens exceeds 4096"))

    @app.get("/coloured")
    def coloured() -> None:
        raise Problem(
            422, "\x1b[31mbad\x1b[0m value from worker (pid=77, ip=10.0.3.7) <Foo object at 0xdeadbeef>"
        )

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("secret internals at 10.0.3.7")

    return TestClient(app, raise_server_exceptions=False)


def test_a_refusal_relayed_by_ray_says_what_went_wrong_and_nothing_else(failing_app, caplog) -> None:
    caplog.set_level(logging.INFO)
    response = failing_app.get("/ray")
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "prompt of 5000 tokens exceeds 4096"
    assert not LEAKS.search(response.text), response.text
    coloured = failing_app.get("/coloured")
    assert coloured.json()["detail"] == "bad value from worker" and not LEAKS.search(coloured.text)
    # The operators still have the whole text.
    assert any("pid=77" in record.getMessage() for record in caplog.records)


def test_an_unexpected_error_is_a_500_problem_with_a_request_id_and_the_trace_in_the_log(
    failing_app, caplog
) -> None:
    with caplog.at_level(logging.ERROR):
        response = failing_app.get("/crash", headers={"X-Request-ID": "trace-me-1"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["request_id"] == "trace-me-1" == response.headers["X-Request-ID"]
    assert "secret" not in response.text and not LEAKS.search(response.text)
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # headers on the 500 too
    logged = [r for r in caplog.records if r.exc_info and "secret internals" in str(r.exc_info[1])]
    assert logged and logged[0].name == "serving.observability"


def test_the_request_id_is_echoed_or_made(sqlite_api) -> None:
    client, people = sqlite_api
    given = client.get("/v1/reads/999", headers={**auth(people.dr_doe), "X-Request-ID": "abc-123.x:y"})
    assert given.headers["X-Request-ID"] == "abc-123.x:y" == given.json()["request_id"]
    for unsafe in ("x" * 200, "semi;colon", "spa ce"):
        made = client.get("/v1/reads/999", headers={**auth(people.dr_doe), "X-Request-ID": unsafe})
        assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
        assert made.json()["request_id"] == made.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz").headers["X-Request-ID"])


def _same_answer(first, second) -> None:
    assert first.status_code == second.status_code == 404, (first.text, second.text)
    strip = lambda r: {k: v for k, v in r.json().items() if k != "request_id"}  # noqa: E731
    assert strip(first) == strip(second)


def test_outsiders_cannot_tell_existing_ids_from_missing_ones(edge_api) -> None:
    client, people = edge_api
    study = upload_study(client, people.dr_doe, people.pam_patient_id).json()["id"]
    read = client.post(f"/v1/studies/{study}/reads", headers=auth(people.dr_doe)).json()["read_id"]
    consultation = new_consultation(client, people.pam)
    missing = 999_999
    outsider = auth(people.dr_who)  # a physician, not in Pam's care team
    _same_answer(
        client.get(f"/v1/reads/{read}", headers=outsider),
        client.get(f"/v1/reads/{missing}", headers=outsider),
    )
    _same_answer(
        client.post(f"/v1/studies/{study}/reads", headers=outsider),
        client.post(f"/v1/studies/{missing}/reads", headers=outsider),
    )
    sign = {"action": "sign"}
    _same_answer(
        client.post(f"/v1/reads/{read}/signoff", json=sign, headers=outsider),
        client.post(f"/v1/reads/{missing}/signoff", json=sign, headers=outsider),
    )
    for intruder in (people.dr_who, people.pete, people.admin):
        _same_answer(
            client.get(f"/v1/consultations/{consultation}", headers=auth(intruder)),
            client.get("/v1/consultations/nosuchconsultation", headers=auth(intruder)),
        )
        _same_answer(
            say(client, intruder, consultation, "let me in"),
            say(client, intruder, "nosuchconsultation", "hi"),
        )
    _same_answer(
        client.post("/v1/consultations", json={"patient_id": people.pam_patient_id}, headers=outsider),
        client.post("/v1/consultations", json={"patient_id": missing}, headers=outsider),
    )
    _same_answer(
        upload_study(client, people.dr_who, people.pam_patient_id),
        upload_study(client, people.dr_who, missing),
    )
    # Each refusal is still audited, with the id of the request that was refused.
    refused = client.get(f"/v1/reads/{read}", headers={**outsider, "X-Request-ID": "denied-read-1"})
    assert refused.status_code == 404
    with client.app.state.services.sessions() as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.outcome == "denied")).all()
    assert any(row.detail.get("request_id") == "denied-read-1" for row in rows)


def test_security_headers_on_every_answer(sqlite_api) -> None:
    client, people = sqlite_api
    api = client.get("/v1/notifications", headers=auth(people.dr_doe))
    error = client.get("/v1/reads/1", headers=auth("wrong"))
    for response in (api, error, client.get("/healthz")):
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == "no-store"  # answers carry patient data
        assert "Strict-Transport-Security" not in headers  # plain HTTP: HSTS would mean nothing
    behind_tls = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert behind_tls.headers["Strict-Transport-Security"].startswith("max-age=")
    docs = client.get("/docs")
    assert docs.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    assert docs.headers["X-Frame-Options"] == "DENY" and "Cache-Control" not in docs.headers


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_every_asset_from_this_server(sqlite_api, page: str) -> None:
    client, _ = sqlite_api
    html = client.get(page)
    assert html.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert assets, html.text
    for url in assets:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "openapi.json" in html.text and client.get("/openapi.json").status_code == 200
