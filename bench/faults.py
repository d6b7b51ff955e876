"""Faults under load: PostgreSQL restarted, Redis restarted, the Gateway replica killed, the HealthGPT
replica killed, each while patients write — and afterwards, every write the service acknowledged is looked
for in the database.

    .venv/bin/python -m bench.faults [--scenario pg|redis|gateway|model|all] [--seconds 40]

Everything runs on private instances started here, never on the shared servers: a PostgreSQL cluster
(``initdb`` into a temporary folder, trust auth, a free port), a Redis (``redis-server`` on a free port,
append-only file on), a Ray head (``ray start --head`` on a free port) and ``healthagent serve`` (the
production profile) on all three. The client writes consultations, messages (the model answers) and
feedback, and reads threads back; a write counts as acknowledged when it answered 2xx with its id.

Per scenario, ``bench/results/faults.json`` records: acknowledged writes and how many of them the database
lacks afterwards (lost; must be 0), 503 answers and how many carried Retry-After, other 5xx and transport
errors (timeouts), and the recovery time of each operation: from the fault to the end of the first
successful request of that kind sent after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.load import MESSAGES, ROOT, Outcome, Recorder, Service, free_port, production_env, timed

PG_BIN = Path(os.environ.get("HEALTHAGENT_PG_BIN", "/usr/local/bin"))
REDIS_SERVER = Path(os.environ.get("HEALTHAGENT_REDIS_SERVER", "/usr/bin/redis-server"))
RAY = Path(sys.executable).with_name("ray")
SCENARIOS = ("pg", "redis", "gateway", "model")
REQUEST_TIMEOUT_S = 60.0  # a request still open after this long counts as hung (a transport error)
BACKOFF_S = 0.2  # after a failure a client tries again this soon, to see the recovery closely
APP = "healthagent"


def missing_binaries(*, ray: bool = False) -> str | None:
    """Why private instances cannot start here, or None."""
    needed = [PG_BIN / "initdb", PG_BIN / "pg_ctl", REDIS_SERVER] + ([RAY] if ray else [])
    absent = [str(path) for path in needed if not os.access(path, os.X_OK)]
    if absent:
        return f"private PostgreSQL/Redis need {', '.join(absent)} (set HEALTHAGENT_PG_BIN / _REDIS_SERVER)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root: initdb needs runuser to run as the postgres user"
    return None


# -- private stores -----------------------------------------------------------------------------------------


def _unprivileged(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; the Debian packages' postgres user runs them then.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PrivatePostgres:
    """A throwaway PostgreSQL cluster in a temporary folder of its own: initialised and started on
    construction, removed by ``close``."""

    def __init__(self) -> None:
        # Its own folder under the system's temporary one: the postgres user (where we are root) cannot
        # enter a caller's private temporary folders.
        self.dir = Path(tempfile.mkdtemp(prefix="hapg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            _unprivileged([str(PG_BIN / tool), *args]), capture_output=True, text=True, timeout=120
        )
        if done.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash as far as clients see: connections cut, recovery from WAL at start."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            self.stop("fast")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A throwaway Redis on a free port, with its append-only file under ``root``."""

    def __init__(self, root: Path, *, appendonly: bool = True) -> None:
        self.dir = root / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        command = [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        command += ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


class PrivateRay:
    """A Ray head of its own (its own port and temporary folder) that ``healthagent serve`` joins, so that
    this bench can reach that cluster's actors and no other cluster on the machine."""

    def __init__(self, root: Path, num_cpus: int) -> None:
        self.port = free_port()
        # A token of its own for this cluster (Ray's token auth), given to every process that joins it.
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        os.environ.update(self.env)  # for this process's driver: Ray reads it once, when first imported
        self.log = (root / "ray-head.log").open("w")
        command = [str(RAY), "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={num_cpus}"]
        command += ["--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"]
        command += [f"--temp-dir={root / 'ray'}", "--object-store-memory=200000000"]
        # Its own session: the whole head (GCS, raylet, workers) is stopped by this group id at the end.
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.address = f"127.0.0.1:{self.port}"

    def connect(self) -> None:
        import ray

        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
                return
            except ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(1)

    def kill_replica(self, deployment: str) -> tuple[float, str]:
        """Kill one live replica actor of ``deployment``: when (time.monotonic), and its name."""
        import ray

        prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
        names = [
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)
        ]
        if not names:
            raise RuntimeError(f"no replica of {deployment} to kill")
        victim = ray.get_actor(names[0], namespace="serve")
        at = time.monotonic()  # the fault is the kill itself, not the look-up before it
        ray.kill(victim, no_restart=True)
        return at, names[0]

    def close(self) -> None:
        import ray

        ray.shutdown()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # what a graceful stop left behind
        except ProcessLookupError:
            pass
        self.log.close()


# -- what was acknowledged, and whether it is there ---------------------------------------------------------

TABLES = {"consultations": "consultations", "messages": "messages", "feedback": "feedback"}


@dataclass
class Ledger:
    """Ids of the writes the service acknowledged (2xx with the id), by table."""

    acknowledged: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def add(self, table: str, record_id: Any) -> None:
        if record_id is not None:
            self.acknowledged[table].append(record_id)

    def counts(self) -> dict[str, int]:
        return {table: len(self.acknowledged.get(table, [])) for table in TABLES}

    def lost(self, database_url: str) -> dict[str, int]:
        """Per table, acknowledged ids the database does not hold."""
        from sqlalchemy import bindparam, create_engine, text

        engine = create_engine(database_url)
        lost: dict[str, int] = {}
        try:
            with engine.connect() as connection:
                for table in TABLES:
                    ids = set(self.acknowledged.get(table, []))
                    query = text(f"SELECT id FROM {table} WHERE id IN :ids").bindparams(  # noqa: S608 - fixed names
                        bindparam("ids", expanding=True)
                    )
                    found: set[Any] = set()
                    chunk = sorted(ids, key=str)
                    for start in range(0, len(chunk), 500):
                        found.update(connection.execute(query, {"ids": chunk[start : start + 500]}).scalars())
                    lost[table] = len(ids - found)
        finally:
            engine.dispose()
        return lost


def fault_figures(outcomes: list[Outcome], fault_at: float) -> dict[str, Any]:
    """Errors by kind, and per operation the time from the fault to the end of the first success among
    the requests sent after it."""
    statuses = Counter(o.status for o in outcomes)
    unavailable = [o for o in outcomes if o.status == "503"]
    after = [o for o in outcomes if o.started >= fault_at]
    recovery: dict[str, float | None] = {}
    for op in sorted({o.op for o in outcomes}):
        first = min((o.ended for o in after if o.op == op and o.ok), default=None)
        recovery[op] = None if first is None else round(first - fault_at, 2)
    failures = [o for o in outcomes if not o.ok and o.ended >= fault_at and o.status not in ("404", "409")]
    return {
        "requests": len(outcomes),
        "status_503": len(unavailable),
        "status_503_with_retry_after": sum(o.retry_after for o in unavailable),
        "other_5xx": {s: n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503"},
        "transport_errors": {s: n for s, n in statuses.items() if not s.isdigit()},
        "recovery_s": recovery,
        "last_failure_s": round(max(o.ended for o in failures) - fault_at, 2) if failures else None,
    }


# -- load ---------------------------------------------------------------------------------------------------


@dataclass
class Load:
    url: str
    tokens: list[str]
    recorder: Recorder = field(default_factory=Recorder)
    ledger: Ledger = field(default_factory=Ledger)


async def _patient(load: Load, index: int, stop_at: float) -> None:
    """One patient: opens a consultation, writes messages, rates answers, reads the thread back."""
    rng = random.Random(index)  # noqa: S311 - a reproducible traffic mix, not a secret
    headers = {"Authorization": f"Bearer {load.tokens[index % len(load.tokens)]}"}
    record, ledger = load.recorder, load.ledger
    consultation: str | None = None
    answers: list[int] = []
    async with httpx.AsyncClient(base_url=load.url, timeout=REQUEST_TIMEOUT_S, headers=headers) as client:
        while time.monotonic() < stop_at:
            roll = rng.random()
            if consultation is None or roll < 0.05:
                response = await timed(record, "open consultation", client.post("/v1/consultations", json={}))
                if ok := response is not None and response.status_code == 201:
                    consultation = response.json()["id"]
                    ledger.add("consultations", consultation)
            elif roll < 0.6:
                path = f"/v1/consultations/{consultation}/messages"
                response = await timed(
                    record, "patient message", client.post(path, json={"message": rng.choice(MESSAGES)})
                )
                if ok := response is not None and response.status_code == 200:
                    answer = response.json().get("message_id")
                    ledger.add("messages", answer)
                    answers += [answer] if answer is not None else []
            elif roll < 0.85 and answers:
                body = {
                    "message_id": rng.choice(answers),
                    "kind": "rating",
                    "payload": {"stars": rng.randint(1, 5)},
                }
                response = await timed(record, "feedback", client.post("/v1/feedback", json=body))
                if ok := response is not None and response.status_code == 201:
                    ledger.add("feedback", response.json()["id"])
            else:
                response = await timed(
                    record, "read consultation", client.get(f"/v1/consultations/{consultation}")
                )
                ok = response is not None and response.status_code == 200
            if not ok:
                await asyncio.sleep(BACKOFF_S)


async def _drive(load: Load, clients: int, seconds: float, fault_after_s: float, fault: Fault) -> dict:
    """Load for ``seconds``; ``fault`` runs (in a thread) ``fault_after_s`` into it."""
    stop_at = time.monotonic() + seconds

    async def _inject() -> dict[str, Any]:
        await asyncio.sleep(fault_after_s)
        at, detail = await asyncio.to_thread(fault)
        return {"at": at, "took_s": round(time.monotonic() - at, 2), "detail": detail}

    injected, *_ = await asyncio.gather(_inject(), *(_patient(load, i, stop_at) for i in range(clients)))
    return injected


def _settle(service: Service, timeout_s: float = 180) -> float | None:
    """Seconds until /readyz answers 200 again (None: not within ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if service.ready():
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


@dataclass
class Stack:
    """The private stores, Ray head and service one run of scenarios shares."""

    pg: PrivatePostgres
    redis: PrivateRedis
    ray: PrivateRay
    service: Service
    tokens: list[str]


# A fault: it runs, then says when it struck (time.monotonic) and what it did.
Fault = Callable[[], tuple[float, str]]


def _faults(stack: Stack, down_s: float) -> dict[str, tuple[str, Fault]]:
    def restart_pg() -> tuple[float, str]:
        at = time.monotonic()
        stack.pg.stop("immediate")
        time.sleep(down_s)
        stack.pg.start()
        return at, f"pg_ctl stop -m immediate, {down_s:g} s down, pg_ctl start"

    def restart_redis() -> tuple[float, str]:
        at = time.monotonic()
        stack.redis.kill()
        time.sleep(down_s)
        stack.redis.start()
        return at, f"redis-server SIGKILL, {down_s:g} s down, started again (append-only file on)"

    def kill(deployment: str) -> tuple[float, str]:
        at, name = stack.ray.kill_replica(deployment)
        return at, f"ray.kill {name}"

    return {
        "pg": ("PostgreSQL crashed and restarted", restart_pg),
        "redis": ("Redis crashed and restarted", restart_redis),
        "gateway": ("the Gateway replica actor killed", lambda: kill("Gateway")),
        "model": ("the HealthGPT replica actor killed", lambda: kill("HealthGPT")),
    }


def run_scenario(stack: Stack, name: str, *, seconds: float, clients: int, down_s: float) -> dict[str, Any]:
    title, fault = _faults(stack, down_s)[name]
    load = Load(stack.service.url, stack.tokens)
    began = time.monotonic()
    injected = asyncio.run(_drive(load, clients, seconds, min(10.0, seconds / 4), fault))
    ready_after_s = _settle(stack.service)
    lost = load.ledger.lost(stack.pg.url)
    summary = load.recorder.summary(time.monotonic() - began)
    return {
        "fault": title,
        "injection": injected["detail"],
        "injected_at_s": round(injected["at"] - began, 2),
        "injection_took_s": injected["took_s"],
        "acknowledged": load.ledger.counts(),
        "lost": lost,
        "lost_total": sum(lost.values()),
        **fault_figures(load.recorder.outcomes, injected["at"]),
        "ready_again_after_load_s": ready_after_s,
        "operations": summary["operations"],
    }


@contextmanager
def stack(workdir: Path, clients: int) -> Iterator[Stack]:
    """Private PostgreSQL, Redis and Ray head, ``healthagent serve`` on them, and ``clients`` patients."""
    cleanup: list[Callable[[], None]] = []
    try:
        pg = PrivatePostgres()
        cleanup.append(pg.close)
        redis = PrivateRedis(workdir)
        cleanup.append(redis.close)
        ray_head = PrivateRay(workdir, num_cpus=os.cpu_count() or 2)
        cleanup.append(ray_head.close)
        env = (
            production_env(pg.url, redis.url) | ray_head.env | {"HEALTHAGENT_RAY__ADDRESS": ray_head.address}
        )
        service = Service(workdir / "service", env)
        cleanup.append(service.stop)
        ray_head.connect()
        tokens = [token for token, _ in service.enrol(clients)["patients"]]
        yield Stack(pg, redis, ray_head, service, tokens)
    finally:
        for close in reversed(cleanup):
            close()


@contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hafaults-"))
    try:
        yield path
    finally:
        if keep:
            print(f"logs kept in {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(
    scenarios: list[str], seconds: float, clients: int, down_s: float, *, keep: bool = False
) -> dict[str, Any]:
    reason = missing_binaries(ray=True)
    if reason:
        raise SystemExit(reason)
    results: dict[str, Any] = {}
    with _workdir(keep) as workdir:
        (workdir / "service").mkdir()
        started = time.perf_counter()
        with stack(workdir, clients) as running:
            startup_s = round(time.perf_counter() - started, 1)
            for name in scenarios:
                print(f"scenario {name}: {seconds:g} s of load ...", flush=True)
                results[name] = run_scenario(running, name, seconds=seconds, clients=clients, down_s=down_s)
                print(json.dumps({k: v for k, v in results[name].items() if k != "operations"}), flush=True)
    return {
        "benchmark": "faults under load through healthagent serve (Ray Serve, loopback), private stores",
        "conditions": {
            "model": "tiny (random demo weights), CPU",
            "profile": "production (PostgreSQL 15 + Redis 7, private instances; Ray head of its own)",
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "clients": clients,
            "seconds_per_scenario": seconds,
            "fault_after_s": min(10.0, seconds / 4),
            "store_down_s": down_s,
            "request_timeout_s": REQUEST_TIMEOUT_S,
            "client_backoff_s": BACKOFF_S,
            "mix": "per patient: open a consultation, then 55% messages (the model answers), 25% feedback on "
            "an answer, 15% thread reads, 5% a new consultation",
            "max_new_tokens": 16,
        },
        "startup_s": startup_s,
        "scenarios": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--down", type=float, default=6.0, help="seconds a store stays down")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    parser.add_argument("--keep", action="store_true", help="keep the service's and Ray's logs")
    args = parser.parse_args(argv)
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    report = run(scenarios, args.seconds, args.clients, args.down, keep=args.keep)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    lost = sum(s["lost_total"] for s in report["scenarios"].values())
    print(f"written to {args.out}; acknowledged writes lost: {lost}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
