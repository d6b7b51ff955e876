"""Orchestration overhead of one agent turn, model time excluded, with the PostgreSQL checkpointer.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python bench/agent.py

A patient holds a consultation through the same code the HTTP API runs (records, audit, checkpoints,
safety screen, route, compose, post-check) with the tiny model in-process. Every model call is timed
where it happens (a wrapper around the client that only measures), and that time is subtracted from the
turn's wall time: what is left is what the agent itself costs per turn. Reported: p50 / p99 over the
turns, first turns excluded as warm-up. Goal: <= 25 ms p50 on the 2-core development machine.

``--specialists serve`` runs the screen as ``make run`` does: the Specialists deployment on a local Ray
Serve (its own process, as configs/serve/local.yaml places it), the message sent to it at the start of
the turn so it is screened while the gateway checks access and stores the message. The embedding then
runs in another process and cannot be subtracted; the time the safety step still waits for the screen
is reported instead (``screen_wait_ms_p50``). HealthGPT stays in-process in both modes (its time is
subtracted either way).

Torch runs single-threaded here by default (``--torch-threads 1``), as in the deployment: Ray gives the
Specialists replica (``num_cpus=0.5``) ``OMP_NUM_THREADS=1``. Two intra-op threads for one short sentence
make every MiniLM layer wait for a second core that the database and the turn's own thread are using; the
JSON records the setting, and ``--torch-threads 0`` keeps torch's default (one per core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

# bench/serving.py would shadow the serving package when this file runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text

from memory.db import normalise_url, transaction
from memory.records import Records
from memory.schema import Role
from memory.users import Principal, new_token, set_bootstrap_token
from models.healthgpt import HealthGPT
from models.tiny import resolve_spec
from serving.services import build_services, prepare_database
from serving.settings import Settings
from serving.turns import TurnInput, open_consultation, run_turn
from tools.healthgpt import InProcessHealthGPT

MESSAGES = [
    "I have had a mild cough for three days.",
    "It is worse at night and I feel a bit tired.",
    "Should I take something for it?",
    "What about my last visit?",
]


class TimedClient:
    """Passes every call to the real client and adds up the time spent in the model."""

    def __init__(self, inner: InProcessHealthGPT) -> None:
        self.inner, self.model_seconds = inner, 0.0

    def __getattr__(self, name: str):
        target = getattr(self.inner, name)
        if name == "ask_stream":

            def stream(*args, **kwargs):
                started = time.perf_counter()
                try:
                    for chunk in target(*args, **kwargs):
                        self.model_seconds += time.perf_counter() - started
                        yield chunk
                        started = time.perf_counter()
                finally:
                    self.model_seconds += time.perf_counter() - started

            return stream
        if not callable(target):
            return target

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                self.model_seconds += time.perf_counter() - started

        return timed


class ScreenWaitTimer:
    """Adds up the time turns wait for a screen sent ahead to a remote Specialists deployment."""

    def __init__(self) -> None:
        from tools.specialists import PendingScreen

        self.seconds, inner = 0.0, PendingScreen.result

        def timed(pending: PendingScreen):
            started = time.perf_counter()
            try:
                return inner(pending)
            finally:
                self.seconds += time.perf_counter() - started

        PendingScreen.result = timed


@contextmanager
def served_specialists() -> Iterator[Any]:
    """The Specialists deployment on a local Ray Serve (one replica, num_cpus 0.5 as in
    configs/serve/local.yaml); yields the gateway's client for it."""
    import ray
    from ray import serve

    from serving.deployments import SpecialistsDeployment
    from tools.specialists import RayServeSpecialists

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    try:
        serve.start()
        # num_cpus 0.5 as deployed: Ray then runs the replica's torch on one thread (OMP_NUM_THREADS=1).
        deployment = SpecialistsDeployment.options(ray_actor_options={"num_cpus": 0.5})
        handle = serve.run(deployment.bind(), name="bench-specialists", route_prefix=None)
        yield RayServeSpecialists(handle)
    finally:
        serve.shutdown()
        ray.shutdown()


class EncoderTimer:
    """Adds up the time the specialist embedding model (all-MiniLM-L6-v2) spends encoding."""

    def __init__(self) -> None:
        from tools import embeddings

        self.seconds, self._inner = 0.0, embeddings._encode

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return self._inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        embeddings._encode = timed


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, help="default: bench/results/agent-overhead.json (-served.json with serve)"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument(
        "--specialists",
        choices=("inprocess", "serve"),
        default="inprocess",
        help="screen in the turn's own process, or on a local Ray Serve deployment as `make run` does",
    )
    args = parser.parse_args()
    served = args.specialists == "serve"
    suffix = "-served" if served else ""
    args.out = args.out or Path(f"bench/results/agent-overhead{suffix}.json")
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    # Other work on the machine moves these figures a lot on 2 cores: the load is recorded with them.
    load_at_start = round(os.getloadavg()[0], 2)
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        sys.exit("set TEST_DATABASE_URL to a PostgreSQL database (the checkpointer under test)")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            limits = {"burst": 10_000, "per_minute": 1_000_000}
            settings = Settings(data_dir=Path(tmp), database_url=url, max_new_tokens=8, rate_limit=limits)
            prepare_database(settings).dispose()
            spec = resolve_spec("tiny", settings.model_dir, 0)
            client = TimedClient(InProcessHealthGPT(HealthGPT(spec)))
            with ExitStack() as stack:
                screens = stack.enter_context(served_specialists()) if served else None
                services = build_services(settings, client, screens)
                stack.callback(services.close)
                with transaction(services.sessions) as session:
                    records = Records(session, set_bootstrap_token(session, new_token()))
                    user, _ = records.create_user(f"patient-{schema}", Role.patient)
                    records.create_patient("Bench Patient", user_id=user.id)
                    patient = Principal(user.id, user.name, Role.patient)
                consultation = open_consultation(services, patient, None)
                encoder, waits = EncoderTimer(), ScreenWaitTimer()
                overheads, walls, without_specialists, screen_waits = [], [], [], []
                for turn in range(args.turns + args.warmup):
                    before, encoder_before, wait_before = client.model_seconds, encoder.seconds, waits.seconds
                    started = time.perf_counter()
                    # Every message is new: no cache may answer for the screens of an earlier turn.
                    message = f"{MESSAGES[turn % len(MESSAGES)]} (day {turn + 1})"
                    run_turn(services, patient, consultation, TurnInput(message))
                    wall = time.perf_counter() - started
                    if turn >= args.warmup:
                        walls.append(wall)
                        overheads.append(wall - (client.model_seconds - before))
                        without_specialists.append(overheads[-1] - (encoder.seconds - encoder_before))
                        screen_waits.append(waits.seconds - wait_before)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    overheads.sort()
    report = {
        "benchmark": "agent orchestration overhead per turn (model time excluded), PostgreSQL checkpointer",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "specialists": args.specialists,
        "torch_threads": torch_threads(),
        "load_average_1min_at_start": load_at_start,
        "turns": len(overheads),
        "overhead_ms": {
            "p50": round(1000 * statistics.median(overheads), 2),
            "p99": round(1000 * overheads[min(len(overheads) - 1, round(0.99 * (len(overheads) - 1)))], 2),
            "mean": round(1000 * statistics.fmean(overheads), 2),
        },
        # Each mode measures one of these: the embedding runs here in-process, elsewhere when served.
        "overhead_minus_embedding_model_ms_p50": (
            None if served else round(1000 * statistics.median(without_specialists), 2)
        ),
        "screen_wait_ms_p50": round(1000 * statistics.median(screen_waits), 2) if served else None,
        "turn_wall_ms_p50": round(1000 * statistics.median(walls), 2),
        "goal_ms_p50": 25,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
