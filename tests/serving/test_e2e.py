"""`healthagent serve` as a user runs it: a subprocess, real Ray Serve, real HTTP."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TOKEN = "ha_e2e-test-token-0123456789abcdefghijklmnopqrstuv"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def database_url_e2e() -> Iterator[str]:
    """A PostgreSQL schema of this module's own (the production database engine)."""
    from tests.conftest import _postgres_schema_url, service_unavailable

    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        service_unavailable("TEST_DATABASE_URL is not set")
    yield from _postgres_schema_url(base)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database_url_e2e: str):
    data_dir = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log_path = data_dir / "serve.log"
    env = {
        **os.environ,
        "HEALTHAGENT_DATA_DIR": str(data_dir),
        "HEALTHAGENT_BOOTSTRAP_TOKEN": TOKEN,
        "HEALTHAGENT_MAX_UPLOAD_BYTES": str(256 * 1024),
        "HEALTHAGENT_MAX_NEW_TOKENS": "8",
        "HEALTHAGENT_DATABASE_URL": database_url_e2e,
    }
    command = [
        str(Path(sys.executable).with_name("healthagent")),
        "serve",
        "--serve-config",
        str(REPO / "configs" / "serve" / "local.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 240:
                pytest.fail(f"not ready after 240 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        print(f"healthagent serve ready in {time.monotonic() - started:.1f} s")
        yield base, process, log_path, database_url_e2e
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _people(database_url: str) -> dict[str, str]:
    """Users made the way an operator makes them (the repositories, as `healthagent users add` does)."""
    from memory.db import make_engine, make_session_factory, transaction
    from memory.records import Records
    from memory.schema import Role
    from memory.users import set_bootstrap_token

    engine = make_engine(database_url)
    tokens: dict[str, str] = {}
    with transaction(make_session_factory(engine)) as session:
        records = Records(session, set_bootstrap_token(session, TOKEN))
        ids = {}
        for name, role in (("pam", Role.patient), ("pete", Role.patient), ("dr_doe", Role.physician)):
            user, tokens[name] = records.create_user(name, role)
            ids[name] = user.id
        pam = records.create_patient("Pam", user_id=ids["pam"])
        records.create_patient("Pete", user_id=ids["pete"])
        records.add_to_care_team(ids["dr_doe"], pam.id)
        tokens["pam_patient_id"] = str(pam.id)
    engine.dispose()
    return tokens


def test_scenarios_through_real_serve_and_postgresql(server) -> None:
    """Each role end to end through real HTTP, Ray Serve and PostgreSQL (the agent scenarios' core)."""
    import pydicom
    from pydicom.data import get_testdata_file

    base, _, _, database_url = server
    people = _people(database_url)

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {people[name]}"}

    with httpx.Client(base_url=base, timeout=120) as http:
        consultation = http.post("/v1/consultations", json={}, headers=auth("pam")).json()["id"]
        answer = http.post(
            f"/v1/consultations/{consultation}/messages",
            json={"message": "I have a mild cough."},
            headers=auth("pam"),
        ).json()
        assert answer["route"] == "consult" and answer["provenance"]["adapter_version"] == "tiny-seed0-v1"
        urgent = http.post(
            f"/v1/consultations/{consultation}/messages",
            headers=auth("pam"),
            json={"message": "sudden crushing chest pain and I can't breathe"},
        ).json()
        assert urgent["escalated"] is True
        assert [
            n["consultation_id"] for n in http.get("/v1/notifications", headers=auth("dr_doe")).json()
        ] == [consultation]
        assert http.get(f"/v1/consultations/{consultation}", headers=auth("pete")).status_code == 404

        with open(get_testdata_file("CT_small.dcm"), "rb") as handle:
            study = http.post(
                "/v1/studies",
                data={"patient_id": people["pam_patient_id"]},
                files={"file": ("ct.dcm", handle.read(), "application/dicom")},
                headers=auth("dr_doe"),
            )
        assert study.status_code == 201, study.text
        clean_name = str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).PatientName)
        assert clean_name not in study.text
        read = http.post(f"/v1/studies/{study.json()['id']}/reads", headers=auth("dr_doe")).json()
        assert read["status"] == "awaiting_signoff"
        assert http.get(f"/v1/reads/{read['read_id']}", headers=auth("pam")).status_code == 404
        signed = http.post(
            f"/v1/reads/{read['read_id']}/signoff",
            headers=auth("dr_doe"),
            json={"action": "correct", "text": "No acute abnormality."},
        )
        assert signed.status_code == 200, signed.text
        final = http.get(f"/v1/reads/{read['read_id']}", headers=auth("pam")).json()
        assert (final["status"], final["physician_final"]) == ("final", "No acute abnormality.")
        summary = http.get("/v1/admin/feedback/summary", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert any(row["kind"] == "correction" and row["count"] == 1 for row in summary)


def test_round_trip_and_errors_then_clean_shutdown(server) -> None:
    base, process, log_path, _ = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, timeout=120) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["checks"]["model"] == "ok"
        assert http.get("/docs").status_code == 200

        # The bootstrap admin's chat is an admin conversation (no patient data, no model).
        text = http.post("/v1/chat", json={"message": "Show the feedback summary."}, headers=auth)
        assert text.status_code == 200, text.text
        assert text.json()["route"] == "admin" and text.json()["disclaimer"]

        image = http.post(
            "/v1/chat",
            data={"message": "What does this show?", "thread_id": text.json()["thread_id"]},
            files={"image": ("scan.png", _png(), "image/png")},
            headers=auth,
        )
        assert image.status_code == 200, image.text
        assert image.json()["thread_id"] == text.json()["thread_id"]

        assert http.post("/v1/chat", json={"message": "x"}).status_code == 401
        assert (
            http.post("/v1/chat", json={"message": "x"}, headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        missing = http.post("/v1/chat", json={"text": "x"}, headers=auth)
        assert missing.status_code == 422 and "message" in missing.json()["detail"]
        assert missing.headers["content-type"].startswith("application/problem+json")
        not_image = http.post(
            "/v1/chat",
            data={"message": "x"},
            files={"image": ("a.png", b"plain text", "image/png")},
            headers=auth,
        )
        assert not_image.status_code == 415
        too_big = http.post(
            "/v1/chat",
            data={"message": "x"},
            files={"image": ("a.png", b"\0" * (300 * 1024), "image/png")},
            headers=auth,
        )
        assert too_big.status_code == 413

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0
    log = log_path.read_text()
    assert "Health Agent is ready at" in log and "shutting down" in log
    assert TOKEN not in log  # a token given through the environment is never printed
