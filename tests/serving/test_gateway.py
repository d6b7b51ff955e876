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
from serving.api.app import create_app
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
    patient_token = _new_user(client, "cora", "patient")
    response = client.post(
        "/v1/chat", json={"message": "I have had a cough for a week."}, headers=_auth(patient_token)
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
    messages = graph.get_state({"configurable": {"thread_id": thread_id}}).values["messages"]
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


def _new_user(client: TestClient, name: str, role: str) -> str:
    from memory.records import Records
    from memory.schema import Role
    from memory.users import Principal

    services = client.app.state.services
    with transaction(services.sessions) as session:
        records = Records(session, Principal(1, "bootstrap-admin", Role.admin))
        user, token = records.create_user(name, Role(role))
        if role == "patient":
            records.create_patient(name, user.id)
    return token


def test_chats_are_stored_and_private(client: TestClient, token: str) -> None:
    from sqlalchemy import select

    from memory.records import Records
    from memory.schema import Role, User
    from memory.users import Principal

    patient_token = _new_user(client, "pam", "patient")
    other_token = _new_user(client, "pete", "patient")
    first = client.post("/v1/chat", json={"message": "my chest hurts"}, headers=_auth(patient_token))
    assert first.status_code == 200, first.text
    thread_id = first.json()["thread_id"]

    services = client.app.state.services
    with transaction(services.sessions) as session:
        pam = session.scalar(select(User).where(User.name == "pam"))
        messages = Records(session, Principal(pam.id, "pam", Role.patient)).list_messages(thread_id)
    assert (messages[0].author_role, messages[0].content) == ("patient", "my chest hurts")
    assert (
        messages[1].author_role == "assistant"
        and messages[1].provenance["adapter_version"] == "tiny-seed0-v1"
    )
    assert first.json()["message_id"] == messages[1].id

    # Another patient, and an admin (no PHI), are told nothing exists: a 403 would confirm the id.
    for intruder, status, fragment in ((other_token, 404, "not found"), (token, 404, "not found")):
        response = client.post(
            "/v1/chat", json={"message": "let me in", "thread_id": thread_id}, headers=_auth(intruder)
        )
        _assert_problem(response, status, fragment)
    _assert_problem(
        client.post(
            "/v1/chat", json={"message": "x", "thread_id": "nosuchthread"}, headers=_auth(patient_token)
        ),
        404,
        "not found",
    )


def test_feedback_is_kept_with_its_adapter_version(client: TestClient) -> None:
    patient_token = _new_user(client, "fay", "patient")
    answer = client.post("/v1/chat", json={"message": "hello"}, headers=_auth(patient_token)).json()
    response = client.post(
        "/v1/feedback",
        json={"message_id": answer["message_id"], "kind": "rating", "payload": {"stars": 2}},
        headers=_auth(patient_token),
    )
    assert response.status_code == 201, response.text
    assert response.json()["adapter_version"] == "tiny-seed0-v1"
    _assert_problem(
        client.post(
            "/v1/feedback", json={"message_id": 99999, "kind": "rating"}, headers=_auth(patient_token)
        ),
        404,
        "not found",
    )
    bad = client.post("/v1/feedback", json={"message_id": 1, "kind": "stars"}, headers=_auth(patient_token))
    assert _assert_problem(bad, 422, "kind")["errors"][0]["field"] == "kind"


def test_an_uploaded_image_is_kept_as_pixels_only_and_attached(client: TestClient) -> None:
    from sqlalchemy import select

    from memory.records import Records
    from memory.schema import Role, User
    from memory.users import Principal

    patient_token = _new_user(client, "ivy", "patient")
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0131] = "PhoneSoftware 1.0 owner=jane.doe@example.org"  # Software: identifying text
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    assert b"CameraMaker" in buffer.getvalue()
    response = client.post(
        "/v1/chat",
        data={"message": "is this rash bad?"},
        files={"image": ("rash.jpg", buffer.getvalue(), "image/jpeg")},
        headers=_auth(patient_token),
    )
    assert response.status_code == 200, response.text
    services = client.app.state.services
    with transaction(services.sessions) as session:
        ivy = session.scalar(select(User).where(User.name == "ivy"))
        messages = Records(session, Principal(ivy.id, "ivy", Role.patient)).list_messages(
            response.json()["thread_id"]
        )
    (key,) = messages[0].attachments
    stored = services.pixels.get(key)
    assert b"CameraMaker" not in stored and b"jane.doe" not in stored
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "PNG" and image.size == (32, 24) and not image.getexif()


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, tiny_model, token: str) -> None:
    settings = Settings(data_dir=tmp_path, max_new_tokens=2, rate_limit={"burst": 2, "per_minute": 6})
    engine = prepare_database(settings)
    with transaction(make_session_factory(engine)) as session:
        set_bootstrap_token(session, token)
    engine.dispose()
    services = build_services(settings, InProcessHealthGPT(tiny_model))
    try:
        with TestClient(create_app(services), raise_server_exceptions=False) as limited:
            feedback = {"message_id": 1, "kind": "rating", "payload": {}}
            headers = _auth(token)
            post = limited.post
            statuses = [post("/v1/feedback", json=feedback, headers=headers).status_code for _ in "abc"]
            assert 429 not in statuses[:2] and statuses[2] == 429
            response = limited.post("/v1/chat", json={"message": "hi"}, headers=_auth(token))
            body = _assert_problem(response, 429, "rate limit")
            assert 1 <= int(response.headers["Retry-After"]) <= 10
            assert "6 requests per minute" in body["detail"]
            assert limited.get("/healthz").status_code == 200, "health checks are never limited"
    finally:
        services.close()
