"""The production paths of feedback refresh on a live local Ray: (a) promotion and rollback through
serving.swap (the Serve controller redeploys the application with only HealthGPT's ``user_config``
changed, so each replica's ``reconfigure`` hot-swaps the adapter) under concurrent load, on both
replicas; (b) a fine-tune job whose worker is a Ray Train ``TorchTrainer`` (``finetune.executor: ray``).

Small on purpose: the tiny model, two 0.5-CPU replicas, one torch thread, a few dozen optimizer steps."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from models.adapters import adapter_plugin_spec, file_sha256
from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from models.tiny import resolve_spec
from models.training import Row, TrainConfig, preset, save_trained, train
from serving.services import prepare_database
from tests.agents.scenarios.conftest import auth, make_people, start
from tests.serving import test_finetune_jobs as jobs
from tests.serving.test_finetune_jobs import PLUGIN, _fresh_redis, correct_reads, run_job, settings_for
from tests.serving.test_ray_serve import LoadGenerator, _settings
from tools.healthgpt import AskRequest

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]  # one torch thread in this process

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from serving.deployments import HealthGPTDeployment, configured_deployments  # noqa: E402 - needs ray

regression = jobs.regression  # the frozen regression set of the gate (module-scoped)
QUESTIONS = [f"What is shown? ({index})" for index in range(3)]


# -- (a) promotion and rollback through the Serve controller -------------------------------------------
class TaggedHealthGPT(HealthGPTDeployment.func_or_class):
    """The HealthGPT deployment as it is, plus which replica answered."""

    async def tagged_ask(self, request: AskRequest):
        result = await self.ask(request)
        return serve.get_replica_context().replica_id.unique_id, result


@serve.deployment(name="Promoter", ray_actor_options={"num_cpus": 0})
class Promoter:
    """Stands in for the gateway: the ingress of the application whose HealthGPT it hot-swaps."""

    def __init__(self, model) -> None:
        self.model = model

    def apply(self, plugin: str, version: str, weights: list[str], sha256: str | None) -> None:
        from serving.swap import ServeSwap

        ServeSwap(timeout_s=120).apply(plugin, version, weights, sha256)


def _trained_adapter(base: ModelSpec, out: Path) -> Path:
    """A few optimizer steps of stage 3 on text rows: an adapter whose answers differ from the base's."""
    model = HealthGPT(base.model_copy(deep=True))
    rows = [Row(kind="sft", question=q, answer="A large effusion.") for q in QUESTIONS] * 2
    hyper = dataclasses.replace(
        preset(3, "comprehension"),
        epochs=4,
        batch_size=3,
        dropout=0.0,
        lr=3e-3,
        projector_lr=3e-3,
        schedule="constant",
        warmup_ratio=0.0,
    )
    result = train(model, rows, TrainConfig(PLUGIN, hyper=hyper, micro_batch_size=3))
    return save_trained(model, result, out, "refresh-ray-1", parent=model.spec.adapter_version)


def _answers(handle) -> list[tuple]:
    out = []
    for question in QUESTIONS:
        _, result = handle.tagged_ask.remote(AskRequest(question=question, max_new_tokens=6)).result(
            timeout_s=60
        )
        out.append((result.text, result.token_ids, result.mean_logprob, result.provenance.adapter_version))
    return out


def _versions_by_replica(handle, rounds: int = 10) -> dict[str, set[str]]:
    """Concurrent requests until both replicas answered: each replica's adapter versions."""
    seen: dict[str, set[str]] = {}
    for _ in range(rounds):
        calls = [
            handle.tagged_ask.remote(AskRequest(question=QUESTIONS[i % 3], max_new_tokens=2))
            for i in range(8)
        ]
        for call in calls:
            replica, result = call.result(timeout_s=60)
            seen.setdefault(replica, set()).add(result.provenance.adapter_version)
        if len(seen) == 2:
            break
    return seen


def test_promote_and_roll_back_through_the_serve_controller_under_load(local_ray: Path) -> None:
    settings = _settings(local_ray)
    base_spec = resolve_spec("tiny", settings.model_dir, 0)
    adapter = _trained_adapter(base_spec, local_ray / "adapters" / "r1")
    new_plugin, metadata = adapter_plugin_spec(adapter)
    new_weights = [str(p) for p in new_plugin.weights]
    old_weights = [str(p) for p in base_spec.plugins[PLUGIN].weights]
    base_version, new_version = base_spec.adapter_version, metadata["version"]

    placed = {"HealthGPT": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}}
    deployment = configured_deployments(settings, placed)["HealthGPT"].options(func_or_class=TaggedHealthGPT)
    shipped = settings.model_dump(mode="json", exclude={"bootstrap_token"})
    # No route: the swap finds the application's ingress from the controller, not from an HTTP route.
    promoter = serve.run(Promoter.bind(deployment.bind(shipped)), name="promote", route_prefix=None)
    model = serve.get_deployment_handle("HealthGPT", app_name="promote")

    before = _answers(model)
    assert {a[3] for a in before} == {base_version}
    started = _versions_by_replica(model)
    assert len(started) == 2 and all(v == {base_version} for v in started.values()), started
    with LoadGenerator(model) as load:
        time.sleep(2)
        promote_at = time.monotonic()
        promoter.apply.remote(PLUGIN, new_version, new_weights, file_sha256(Path(new_weights[0]))).result(
            timeout_s=180
        )
        promoted_at = time.monotonic()
        replicas = _versions_by_replica(model)
        promoted = _answers(model)
        time.sleep(2)
        rollback_at = time.monotonic()
        promoter.apply.remote(PLUGIN, base_version, old_weights, file_sha256(Path(old_weights[0]))).result(
            timeout_s=180
        )
        rolled_at = time.monotonic()
        time.sleep(2)
    after = _answers(model)

    assert load.failures == [], load.failures[:5]
    assert len(replicas) == 2 and all(v == {new_version} for v in replicas.values()), replicas
    assert {a[3] for a in promoted} == {new_version}
    assert [a[0] for a in promoted] != [a[0] for a in before], "the trained adapter answers differently"
    assert after == before  # bit-identical: text, tokens, log-probability and version
    served = [(sent, v) for sent, v in load.versions]
    assert {v for sent, v in served if sent < promote_at} == {base_version}
    assert {v for sent, v in served if promoted_at + 0.5 < sent < rollback_at} == {new_version}
    assert {v for sent, v in served if sent > rolled_at + 0.5} == {base_version}
    # Only user_config changed: the replicas that served before serve still (reconfigured, not replaced).
    assert set(replicas) == set(started) == set(_versions_by_replica(model))
    status = serve.status().applications["promote"]
    assert status.status == "RUNNING" and status.deployments["HealthGPT"].status == "HEALTHY"
    print(f"\nswap under load: {len(served)} served, {len(load.failures)} failed")
    serve.delete("promote")


def _ray_job_settings(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, regression, **finetune
):
    """Settings, database ready, for a gateway whose jobs run on the local Ray (on PostgreSQL with Redis
    events and locks, as deployed)."""
    settings = settings_for(tmp_path, database_url, regression, executor="ray", **finetune)
    if database_url.startswith("postgresql"):
        redis_url = request.getfixturevalue("redis_url")
        _fresh_redis(redis_url)
        settings = settings.model_copy(update={"redis_url": redis_url})
    prepare_database(settings).dispose()
    return settings


# -- (b) a fine-tune job on Ray Train ------------------------------------------------------------------
def test_a_job_runs_on_ray_train(
    request: pytest.FixtureRequest, local_ray: Path, tmp_path: Path, database_url: str, tiny_spec, regression
) -> None:
    settings = _ray_job_settings(request, tmp_path, database_url, regression, cpus_per_worker=1.0)
    client, services = start(settings, HealthGPT(tiny_spec.model_copy(deep=True)))
    try:
        people = make_people(services)
        correct_reads(services, people)
        job = run_job(client, people, epochs=12)
        assert job["status"] in ("succeeded", "rejected"), json.dumps(job, indent=2)
        assert job["gate"] is not None and job["candidate_version"]
        assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
        events = client.get(f"/v1/admin/finetunes/{job['id']}/events", headers=auth(people.admin)).json()
        kinds = [e["kind"] for e in events]
        assert kinds[0] == "queued" and "running" in kinds and "evaluating" in kinds
        assert kinds[-1] == job["status"]
        progress = [e["data"] for e in events if e["kind"] == "progress"]
        assert progress and {"step", "loss", "tokens_per_second", "eta_seconds"} <= set(progress[0])
        # It ran as a Ray Train run (its storage is under the job's folder), not in this process.
        runs = list((settings.finetune_dir / f"job-{job['id']}" / "ray").glob("healthagent-finetune-*"))
        assert runs, "no Ray Train run was recorded"
        print(f"\nray train job: {job['status']}, {len(progress)} progress events")

        # Cancelled on Ray: the worker asks the job's control actor between optimizer steps.
        correct_reads(services, people, count=6)
        services.finetunes.config = services.finetunes.config.model_copy(update={"epochs": 500})
        job_id = client.post(
            "/v1/admin/finetunes", json={"plugin": PLUGIN}, headers=auth(people.admin)
        ).json()["id"]
        deadline = time.monotonic() + 120
        while (
            client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()["progress"] is None
        ):
            assert time.monotonic() < deadline, "no progress from the Ray Train worker"
            time.sleep(0.2)
        assert (
            client.post(f"/v1/admin/finetunes/{job_id}/cancel", headers=auth(people.admin)).status_code == 202
        )
        services.finetunes.wait(job_id, 120)
        cancelled = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()
        assert cancelled["status"] == "cancelled" and cancelled["candidate_version"] is None, cancelled

        # A worker that fails (here: the gate's regression set is not one) fails the job with its own reason.
        broken = tmp_path / "not-a-regression-set"
        broken.mkdir()
        services.finetunes.config = services.finetunes.config.model_copy(
            update={"epochs": 1, "regression_set": broken}
        )
        failed = run_job(client, people)
        assert failed["status"] == "failed", failed
        assert "not a frozen regression set" in failed["error"], failed["error"]
        assert "Traceback" not in failed["error"], failed["error"]  # the worker's reason, not Ray's
        assert services.model.info().adapter_versions[PLUGIN] == job["champion_version"]
    finally:
        client.__exit__(None, None, None)
        services.close()


def test_a_job_without_room_in_the_cluster_fails_at_its_queue_deadline(
    request: pytest.FixtureRequest, local_ray: Path, tmp_path: Path, database_url: str, tiny_spec, regression
) -> None:
    """A worker that asks for a GPU on a CPU-only cluster waits, queued, until finetune.queue_timeout_s,
    then fails naming what it waited for; nothing of it stays waiting in the cluster."""
    from ray.util import placement_group_table

    settings = _ray_job_settings(
        request, tmp_path, database_url, regression, use_gpu=True, queue_timeout_s=3.0
    )
    client, services = start(settings, HealthGPT(tiny_spec.model_copy(deep=True)))
    try:
        people = make_people(services)
        correct_reads(services, people)  # enough to train on: what it lacks is the GPU
        started = time.monotonic()
        job_id = client.post(
            "/v1/admin/finetunes", json={"plugin": PLUGIN}, headers=auth(people.admin)
        ).json()["id"]
        time.sleep(1.0)
        waiting = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()
        assert waiting["status"] == "queued", waiting  # not running while it has no worker
        services.finetunes.wait(job_id, 60)
        job = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()
        assert time.monotonic() - started >= 3.0
        assert job["status"] == "failed" and job["candidate_version"] is None, job
        assert "queue_timeout_s" in job["error"] and "1 CPU, 1 GPU each" in job["error"], job["error"]
        assert "0 GPU free" in job["error"], job["error"]
        kinds = [
            e["kind"]
            for e in client.get(f"/v1/admin/finetunes/{job_id}/events", headers=auth(people.admin)).json()
        ]
        assert kinds == ["queued", "failed"], kinds
        pending = [g for g in placement_group_table().values() if g["state"] == "PENDING"]
        assert pending == [], pending
        # Nothing was registered: the champion serves on.
        assert services.model.info().adapter_versions[PLUGIN] == job["champion_version"]
        print(f"\nqueue deadline: {job['error']}")
    finally:
        client.__exit__(None, None, None)
        services.close()


def test_auto_trains_in_a_child_process_when_the_cluster_has_no_room(
    request: pytest.FixtureRequest, local_ray: Path, tmp_path: Path, database_url: str, tiny_spec, regression
) -> None:
    """``executor: auto`` on Ray whose replicas hold the CPUs a Ray Train worker needs (the embedded
    profile on two cores): the job trains in a child process at once, and says so, instead of waiting
    ``queue_timeout_s`` for a CPU no one frees."""
    settings = _ray_job_settings(
        request, tmp_path, database_url, regression, cpus_per_worker=64.0, queue_timeout_s=600.0
    )
    settings = settings.model_copy(
        update={"finetune": settings.finetune.model_copy(update={"executor": "auto"})}
    )
    client, services = start(settings, HealthGPT(tiny_spec.model_copy(deep=True)))
    try:
        people = make_people(services)
        correct_reads(services, people)
        started = time.monotonic()
        job = run_job(client, people, epochs=12)
        assert time.monotonic() - started < 300
        assert job["status"] in ("succeeded", "rejected"), json.dumps(job, indent=2)
        events = client.get(f"/v1/admin/finetunes/{job['id']}/events", headers=auth(people.admin)).json()
        kinds = [e["kind"] for e in events]
        assert kinds[:3] == ["queued", "executor", "running"], kinds
        reason = events[1]["data"]["reason"]
        assert events[1]["data"]["executor"] == "process" and "64 CPU" in reason, reason
        # Not a Ray Train run: nothing of one under the job's folder.
        assert not list((settings.finetune_dir / f"job-{job['id']}" / "ray").glob("healthagent-finetune-*"))
    finally:
        client.__exit__(None, None, None)
        services.close()
