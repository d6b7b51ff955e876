"""The HealthGPT deployment on real Ray Serve: adapter hot-swap under load, a replica killed under
load, and placement on the GPU-worker node of a multi-node cluster (a custom resource stands in for
the GPU)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from models.spec import ModelSpec
from models.tiny import build_tiny
from serving.settings import Settings
from tools.healthgpt import AskRequest, RayServeHealthGPT

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


def _settings(data_dir: Path, **overrides) -> Settings:
    return Settings(
        data_dir=data_dir,
        engine={"max_batch": 4, "max_queue": 16},
        **overrides,
    )


def _deploy(settings: Settings, user_config: dict | None = None, name: str = "models", **options):
    from serving.deployments import configured_deployments

    placed = {"HealthGPT": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}, **options}}
    deployment = configured_deployments(settings, placed)["HealthGPT"]
    if user_config is not None:
        deployment = deployment.options(user_config=user_config)
    shipped = settings.model_dump(mode="json", exclude={"bootstrap_token"})
    return serve.run(deployment.bind(shipped), name=name, route_prefix=None)


class LoadGenerator:
    """Threads sending requests back to back; records each outcome and adapter version."""

    def __init__(self, handle, threads: int = 4, timeout_s: float = 60.0) -> None:
        self.client, self.timeout_s = RayServeHealthGPT(handle, timeout_s=timeout_s), timeout_s
        self.versions: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                result = self.client.ask(AskRequest(question=f"What is shown? ({index})", max_new_tokens=6))
                with self._lock:
                    self.versions.append((sent, result.provenance.adapter_version))
            except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 10)
            assert not thread.is_alive(), "a request hung past its timeout"


def test_adapter_hot_swap_under_load_fails_nothing(local_ray: Path) -> None:
    settings = _settings(local_ray)
    handle = _deploy(settings)
    new = ModelSpec.from_yaml(build_tiny(local_ray / "adapters" / "tiny-seed5", seed=5)).plugins[
        "comprehension"
    ]
    with LoadGenerator(handle) as load:
        time.sleep(3)
        swapped_at = time.monotonic()
        # Only user_config changes: Serve calls reconfigure() on the running replicas, no restart.
        _deploy(
            settings,
            {"adapters": {"comprehension": {"version": "v2", "weights": [str(p) for p in new.weights]}}},
        )
        applied_at = time.monotonic()
        time.sleep(4)
    assert load.failures == [], load.failures[:5]
    before = Counter(v for sent, v in load.versions if sent < swapped_at)
    after = Counter(v for sent, v in load.versions if sent > applied_at + 0.5)
    assert before and set(before) == {"tiny-seed0-v1"}
    assert after and set(after) == {"v2"}, after
    assert len(load.versions) >= 20


def _ray_metrics(pattern: str, replicas: set[str], deadline_s: float = 45.0) -> list[tuple[dict, float]]:
    """Samples of the series named ``pattern`` from ``replicas`` on this node's Ray metrics port, once
    every one of them has published (Ray's agent exports every few seconds)."""
    import re
    import urllib.request

    port = ray._private.worker._global_node.metrics_export_port
    line = re.compile(rf"^{pattern}\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$")
    end = time.monotonic() + deadline_s
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        samples = [
            (labels, float(m["value"]))
            for m in map(line.match, text.splitlines())
            if m and (labels := dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))).get("replica") in replicas
        ]
        if {labels["replica"] for labels, _ in samples} == replicas or time.monotonic() > end:
            return samples
        time.sleep(2)


def test_model_replicas_publish_engine_metrics_through_ray(local_ray: Path) -> None:
    """Behind Serve the engine runs in the model replicas: its figures reach Prometheus from there."""
    handle = _deploy(_settings(local_ray), name="metered")
    replicas = {name.rsplit("#", 1)[-1] for name in _replica_actors("metered", "HealthGPT")}
    assert len(replicas) == 2
    client = RayServeHealthGPT(handle, timeout_s=60)
    for index in range(6):
        client.ask(AskRequest(question=f"What is shown? ({index})", max_new_tokens=6))
    tokens = _ray_metrics("ray_healthagent_engine_tokens_generated_total", replicas)
    assert {labels["replica"] for labels, _ in tokens} == replicas, "each replica publishes its own series"
    assert sum(value for _, value in tokens) >= 6 and {labels["model"] for labels, _ in tokens} == {
        "tiny-seed0"
    }
    adapters = _ray_metrics("ray_healthagent_engine_adapter_info", replicas)
    serving = {(labels["plugin"], labels["adapter_version"]) for labels, value in adapters if value == 1}
    assert serving == {("comprehension", "tiny-seed0-v1"), ("generation", "tiny-seed0-v1")}, adapters
    assert _ray_metrics("ray_healthagent_engine_queue_depth", replicas), "the gauges are published too"
    serve.delete("metered")


def _replica_actors(app: str, deployment: str) -> list[str]:
    """Names of the live replica actors of ``app``/``deployment``."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)
    ]
    alive = []
    for name in names:
        try:
            ray.get(ray.get_actor(name, namespace="serve").__ray_ready__.remote(), timeout=5)
            alive.append(name)
        except Exception:  # noqa: BLE001, S112 - dead or dying: not alive
            continue
    return alive


def test_a_killed_replica_is_replaced_and_no_request_hangs(local_ray: Path) -> None:
    settings = _settings(local_ray)
    handle = _deploy(settings, name="fault")
    victims = _replica_actors("fault", "HealthGPT")
    assert len(victims) == 2
    with LoadGenerator(handle, timeout_s=60) as load:
        time.sleep(2)
        served_before = len(load.versions)
        ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
        time.sleep(6)
    assert served_before > 0 and len(load.versions) > served_before, "the surviving replica kept serving"
    # Requests caught on the dying replica are retried on the live one by the client.
    assert load.failures == [], load.failures
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        alive = _replica_actors("fault", "HealthGPT")
        if len(alive) == 2 and victims[0] not in alive:
            break
        time.sleep(1)
    else:
        pytest.fail("the killed replica was not replaced")
    assert handle.ask.remote(AskRequest(question="still there?", max_new_tokens=2)).result(timeout_s=60)
    # The gateway's pre-check counts a prompt on the replica, as its engine would (no forward pass).
    size = RayServeHealthGPT(handle).prompt_size("how long is this?")
    assert size is not None and 0 < size.tokens < size.limit == 4096
    print(f"\nkill under load: {len(load.versions)} served, {len(load.failures)} failed: {load.failures}")
    serve.delete("fault")
