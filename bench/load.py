"""Load through the whole service: `healthagent serve` as a subprocess (real Ray Serve, real HTTP on
loopback), mixed patient / physician / admin traffic from an asyncio client, bounded in time and concurrency.

    .venv/bin/python -m bench.load [--seconds 60] [--concurrency 8] [--profile embedded|postgres]

``postgres`` uses $TEST_DATABASE_URL (a fresh schema) and $TEST_REDIS_URL with the production profile. Writes
``bench/results/load-<profile>.json``: per operation p50/p99 latency and counts by status, overall throughput
and error rate (5xx and transport errors; 429/503 with Retry-After are counted apart as back-pressure), the
conditions (tiny model, CPU, cores, concurrency, duration).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HEALTHAGENT = str(Path(sys.executable).with_name("healthagent"))
MESSAGES = [
    "I have had a dry cough for a week, no fever",
    "my knee hurts after running, should I rest it?",
    "最近睡不好，白天很累，怎么办",
    "what does a high cholesterol result mean?",
    "I get headaches most afternoons when working at the screen",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (90, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _postgres_schema(base: str) -> str:
    """A fresh schema on the test server, so the run starts from an empty database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"load_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def production_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The production profile on these stores (migrated by ``Service`` before it starts)."""
    return {
        "HEALTHAGENT_PROFILE": "production",
        "HEALTHAGENT_DATABASE_URL": database_url,
        "HEALTHAGENT_REDIS_URL": redis_url,
    }


def profile_env(profile: str) -> dict[str, str]:
    if profile != "postgres":
        return {}
    database, redis = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    if not database or not redis:
        raise SystemExit("profile postgres needs TEST_DATABASE_URL and TEST_REDIS_URL")
    return production_env(_postgres_schema(database), redis)


class Service:
    """``healthagent serve`` as a subprocess on a free port, ready when constructed; ``env`` adds to (or
    overrides) its environment."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.env = {**os.environ, "HEALTHAGENT_DATA_DIR": str(workdir), "RAY_USAGE_STATS_ENABLED": "0"}
        self.env["HEALTHAGENT_RATE_LIMIT__BURST"] = "100000"
        self.env["HEALTHAGENT_RATE_LIMIT__PER_MINUTE"] = "6000000"
        self.env["HEALTHAGENT_MAX_NEW_TOKENS"] = "16"
        self.env.update(env or {})
        if self.env.get("HEALTHAGENT_PROFILE") == "production":
            self.cli("db", "upgrade")
        self.log_path = workdir / "serve.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [HEALTHAGENT, "serve", "--port", str(self.port)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited {self.process.returncode}: see {self.log_path}")
            if self.ready():
                return
            time.sleep(1)
        raise SystemExit("the service was not ready in 300 s")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def cli(self, *args: str) -> str:
        done = subprocess.run([HEALTHAGENT, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise SystemExit(f"healthagent {' '.join(args)}: {done.stderr}")
        return done.stdout

    def user(self, name: str, role: str) -> tuple[str, int | None]:
        out = self.cli("users", "add", "--name", name, "--role", role)
        patient = re.search(r"patient_id (\d+)", out)
        return re.search(r"token: (ha_\S+)", out).group(1), int(patient.group(1)) if patient else None

    def enrol(self, patients: int) -> dict[str, Any]:
        """Patients ``patient0``… in the care of ``dr_load``, and an admin: their tokens (and patient ids)."""
        people = {
            "patients": [self.user(f"patient{i}", "patient") for i in range(patients)],
            "physician": self.user("dr_load", "physician")[0],
            "admin": self.user("admin_load", "admin")[0],
        }
        for i in range(patients):
            self.cli("users", "care-team", "add", "dr_load", f"patient{i}")
        return people

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@dataclass(frozen=True)
class Outcome:
    """One request: when it started and ended (time.monotonic), its status (or the transport error's
    name) and whether a 429/503 said when to retry."""

    op: str
    started: float
    ended: float
    status: str
    retry_after: bool

    @property
    def ok(self) -> bool:
        return self.status.isdigit() and 200 <= int(self.status) < 300


class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.outcomes: list[Outcome] = []

    def add(self, op: str, started: float, status: int | str, *, retry_after: bool = False) -> None:
        ended = time.monotonic()
        self.latency[op].append((ended - started) * 1000)
        self.statuses[op][str(status)] += 1
        self.outcomes.append(Outcome(op, started, ended, str(status), retry_after))

    def summary(self, elapsed: float) -> dict[str, Any]:
        ops = {}
        total = errors = back_pressure = 0
        for op, values in sorted(self.latency.items()):
            ordered = sorted(values)
            statuses = dict(self.statuses[op])
            total += len(values)
            errors += sum(n for s, n in statuses.items() if not s.isdigit() or (int(s) >= 500 and s != "503"))
            back_pressure += statuses.get("429", 0) + statuses.get("503", 0)
            ops[op] = {
                "count": len(values),
                "p50_ms": round(statistics.median(ordered), 1),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
                "statuses": statuses,
            }
        return {
            "requests": total,
            "throughput_rps": round(total / elapsed, 2),
            "error_rate": round(errors / max(1, total), 4),
            "back_pressure_rate": round(back_pressure / max(1, total), 4),
            "operations": ops,
        }


async def timed(recorder: Recorder, op: str, call) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response = await call
    except httpx.HTTPError as exc:
        recorder.add(op, started, type(exc).__name__)
        return None
    recorder.add(op, started, response.status_code, retry_after="retry-after" in response.headers)
    return response


async def _worker(index: int, url: str, people: dict, recorder: Recorder, stop_at: float, png: bytes) -> None:
    rng = random.Random(index)  # noqa: S311 - a reproducible traffic mix, not a secret
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        patient_token, patient_id = people["patients"][index % len(people["patients"])]
        headers = {"Authorization": f"Bearer {patient_token}"}
        created = await timed(
            recorder, "open consultation", client.post("/v1/consultations", json={}, headers=headers)
        )
        consultation = created.json()["id"] if created is not None and created.status_code == 201 else None
        while time.monotonic() < stop_at:
            roll = rng.random()
            if roll < 0.6 and consultation:  # patients: a message (the model answers)
                await timed(recorder, "patient message", client.post(
                    f"/v1/consultations/{consultation}/messages",
                    json={"message": rng.choice(MESSAGES)}, headers=headers))  # fmt: skip
            elif roll < 0.7 and consultation:  # patients: read the thread back
                await timed(
                    recorder,
                    "read consultation",
                    client.get(f"/v1/consultations/{consultation}", headers=headers),
                )
            elif roll < 0.85:  # physicians: notifications and a picture upload to a patient's consultation
                doctor = {"Authorization": f"Bearer {people['physician']}"}
                if rng.random() < 0.5:
                    await timed(recorder, "notifications", client.get("/v1/notifications", headers=doctor))
                else:
                    opened = await timed(recorder, "physician consultation", client.post(
                        "/v1/consultations", json={"patient_id": patient_id}, headers=doctor))  # fmt: skip
                    if opened is not None and opened.status_code == 201:
                        await timed(recorder, "physician picture message", client.post(
                            f"/v1/consultations/{opened.json()['id']}/messages",
                            data={"message": "what does this show?"},
                            files={"files": ("p.png", png, "image/png")},
                            headers=doctor))  # fmt: skip
            else:  # admins
                admin = {"Authorization": f"Bearer {people['admin']}"}
                path = "/v1/admin/feedback/summary" if rng.random() < 0.5 else "/v1/admin/adapters"
                await timed(recorder, "admin summary", client.get(path, headers=admin))


def run(profile: str, seconds: float, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="healthagent-load-") as tmp:
        started = time.perf_counter()
        service = Service(Path(tmp), profile_env(profile))
        startup_s = time.perf_counter() - started
        try:
            people = service.enrol(concurrency)
            recorder = Recorder()
            png = _png()
            stop_at = time.monotonic() + seconds
            began = time.perf_counter()

            async def _all() -> None:
                await asyncio.gather(
                    *(_worker(i, service.url, people, recorder, stop_at, png) for i in range(concurrency))
                )

            asyncio.run(_all())
            elapsed = time.perf_counter() - began
            ready_after = httpx.get(f"{service.url}/readyz", timeout=10).status_code
        finally:
            service.stop()
    return {
        "benchmark": "mixed patient/physician/admin load through healthagent serve (Ray Serve, loopback)",
        "profile": profile,
        "conditions": {
            "model": "tiny (random demo weights), CPU",
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "concurrency": concurrency,
            "seconds": seconds,
            "max_new_tokens": 16,
            "mix": "60% patient messages, 10% thread reads, 15% physician (notifications or picture turn), "
            "15% admin summaries",
        },
        "startup_s": round(startup_s, 1),
        "ready_after": ready_after,
        **Recorder.summary(recorder, elapsed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["embedded", "postgres"], default="embedded")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run(args.profile, args.seconds, args.concurrency)
    out = args.out or ROOT / "bench" / "results" / f"load-{args.profile}.json"
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "operations"}, indent=1))
    for op, figures in report["operations"].items():
        print(
            f"  {op:<28} n={figures['count']:<5} p50 {figures['p50_ms']:>8} ms"
            f"  p99 {figures['p99_ms']:>8} ms  {figures['statuses']}"
        )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
