"""`healthagent serve` as a user runs it: a subprocess, real Ray Serve, real HTTP."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
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
def server(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log_path = data_dir / "serve.log"
    env = {
        **os.environ,
        "HEALTHAGENT_DATA_DIR": str(data_dir),
        "HEALTHAGENT_BOOTSTRAP_TOKEN": TOKEN,
        "HEALTHAGENT_MAX_UPLOAD_BYTES": str(256 * 1024),
        "HEALTHAGENT_MAX_NEW_TOKENS": "8",
    }
    command = [
        str(Path(sys.executable).with_name("healthagent")),
        "serve",
        "--serve-config", str(REPO / "configs" / "serve" / "local.yaml"),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
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
        yield base, process, log_path
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


def test_round_trip_and_errors_then_clean_shutdown(server) -> None:
    base, process, log_path = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, timeout=120) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["checks"]["model"] == "ok"
        assert http.get("/docs").status_code == 200

        text = http.post("/v1/chat", json={"message": "I feel dizzy."}, headers=auth)
        assert text.status_code == 200, text.text
        provenance = text.json()["provenance"]
        assert provenance["model"] == "tiny-seed0" and provenance["plugin"] == "comprehension"
        assert provenance["adapter_version"] == "tiny-seed0-v1" and provenance["demo_weights"] is True
        assert text.json()["disclaimer"]

        image = http.post(
            "/v1/chat",
            data={"message": "What does this show?", "thread_id": text.json()["thread_id"]},
            files={"image": ("scan.png", _png(), "image/png")},
            headers=auth,
        )
        assert image.status_code == 200, image.text
        assert image.json()["thread_id"] == text.json()["thread_id"]
        assert image.json()["provenance"]["demo_weights"] is True

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
