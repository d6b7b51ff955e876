"""The HTTP API in-process (FastAPI TestClient, the tiny model, a real SQLite database)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agents.prompts import DISCLAIMER
from memory.db import make_session_factory, transaction
from memory.users import new_token, set_bootstrap_token
from serving.gateway import create_app
from serving.services import build_services, prepare_database
from serving.settings import Settings
from tools.healthgpt import InProcessHealthGPT

MAX_UPLOAD = 64 * 1024


@pytest.fixture
def token() -> str:
    return new_token()


@pytest.fixture
def client(tmp_path: Path, tiny_model, token: str):
    settings = Settings(
        data_dir=tmp_path, max_upload_bytes=MAX_UPLOAD, max_new_tokens=4, max_message_chars=200
    )
    engine = prepare_database(settings)
    with transaction(make_session_factory(engine)) as session:
        set_bootstrap_token(session, token)
    engine.dispose()
    services = build_services(settings, InProcessHealthGPT(tiny_model))
    with TestClient(create_app(services), raise_server_exceptions=False) as test_client:
        yield test_client
    services.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _assert_problem(response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and fragment in body["detail"]
    return body


def test_health_and_docs_are_open(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "database": "ok",
        "model": "ok",
        "redis": "not configured (embedded)",
    }
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]["/v1/chat"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }


def test_chat_json_answers_with_provenance_and_disclaimer(client: TestClient, token: str) -> None:
    response = client.post(
        "/v1/chat", json={"message": "I have had a cough for a week."}, headers=_auth(token)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["disclaimer"] == DISCLAIMER
    assert "Demo model" in body["answer"]
    assert body["provenance"]["model"] == "tiny-seed0"
    assert body["provenance"]["plugin"] == "comprehension"
    assert body["provenance"]["adapter_version"] == "tiny-seed0-v1"
    assert body["provenance"]["demo_weights"] is True


def test_chat_multipart_with_image_continues_a_thread(client: TestClient, token: str) -> None:
    first = client.post(
        "/v1/chat",
        data={"message": "What does this X-ray show?"},
        files={"image": ("xray.png", _png(), "image/png")},
        headers=_auth(token),
    )
    assert first.status_code == 200, first.text
    thread_id = first.json()["thread_id"]
    second = client.post(
        "/v1/chat", json={"message": "And now?", "thread_id": thread_id}, headers=_auth(token)
    )
    assert second.status_code == 200 and second.json()["thread_id"] == thread_id
    graph = client.app.state.services.graph
    principal_thread = {"configurable": {"thread_id": f"user-1:{thread_id}"}}
    messages = graph.get_state(principal_thread).values["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "What does this X-ray show?",
        "And now?",
    ]


@pytest.mark.parametrize("header", [None, "Bearer ", "Bearer ha_wrong", "Basic dXNlcjpwYXNz"])
def test_missing_or_wrong_token_is_401(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client.post("/v1/chat", json={"message": "hi"}, headers=headers)
    _assert_problem(response, 401, "token")
    assert response.headers["www-authenticate"] == "Bearer"


def test_missing_message_is_422_naming_the_field(client: TestClient, token: str) -> None:
    body = _assert_problem(client.post("/v1/chat", json={}, headers=_auth(token)), 422, "message")
    assert body["errors"] == [{"field": "message", "message": "Field required"}]
    multipart = client.post("/v1/chat", files={"image": ("a.png", _png(), "image/png")}, headers=_auth(token))
    assert _assert_problem(multipart, 422, "message")["errors"][0]["field"] == "message"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "x" * 201}, "message"),
        ({"message": "x", "thread_id": "../etc"}, "thread_id"),
    ],
)
def test_invalid_fields_are_422(client: TestClient, token: str, payload: dict, field: str) -> None:
    body = _assert_problem(client.post("/v1/chat", json=payload, headers=_auth(token)), 422, field)
    assert body["errors"][0]["field"] == field


def test_malformed_json_is_422(client: TestClient, token: str) -> None:
    response = client.post(
        "/v1/chat", content=b"{not json", headers={**_auth(token), "content-type": "application/json"}
    )
    _assert_problem(response, 422, "JSON")


def test_non_image_upload_is_415(client: TestClient, token: str) -> None:
    response = client.post(
        "/v1/chat",
        data={"message": "look"},
        files={"image": ("notes.txt", b"just some text", "image/png")},
        headers=_auth(token),
    )
    _assert_problem(response, 415, "not a readable image")


def test_unsupported_content_type_is_415(client: TestClient, token: str) -> None:
    response = client.post(
        "/v1/chat", content=b"hello", headers={**_auth(token), "content-type": "text/plain"}
    )
    _assert_problem(response, 415, "application/json")


def test_oversized_upload_is_413(client: TestClient, token: str) -> None:
    big = b"\x89PNG" + b"\0" * (MAX_UPLOAD + 10)
    response = client.post(
        "/v1/chat",
        data={"message": "look"},
        files={"image": ("big.png", big, "image/png")},
        headers=_auth(token),
    )
    _assert_problem(response, 413, "limit")


def test_oversized_streamed_body_is_413(client: TestClient, token: str) -> None:
    """A chunked body with no Content-Length is cut off while streaming."""

    def chunks():
        for _ in range(40):
            yield b"x" * 16384

    response = client.post(
        "/v1/chat", content=chunks(), headers={**_auth(token), "content-type": "application/json"}
    )
    _assert_problem(response, 413, "limit")
