"""Fine-tune jobs and adapter promotion, as the gateway runs them.

A job (``POST /v1/admin/finetunes``) goes queued → running → evaluating → succeeded | rejected | failed |
cancelled. The gateway that accepts it supervises it from a background thread and owns every database
write and progress event; the work itself (tools.finetune.refresh) runs where training cannot block
serving:

- on Ray (the gateway is a Serve replica, or Ray is initialised) with room for its workers: a Ray Train
  ``TorchTrainer`` with ``settings.finetune.num_workers`` workers (GPUs if ``use_gpu``); progress comes
  back on a Ray queue;
- otherwise a child process (spawned), progress on a multiprocessing queue; ``executor: thread`` runs it
  in the gateway process (debugging).

A worker that dies (killed, out of memory, a lost node) fails the job with that reason; nothing was
registered and the champion is untouched. One job per plugin at a time: the job holds the lock
``finetune:<plugin>`` (Redis or in-process, memory.locks), renewed by its heartbeat.

**Restarts.** A job outlives the gateway: its dataset snapshot, checkpoints (one per optimizer step) and
state live under ``data_dir/finetune/job-<id>`` and in the database. At start, and every heartbeat, a
gateway adopts jobs whose heartbeat is older than ``stale_after_s`` (their runner is gone) and resumes
them from their last checkpoint (``resume_on_start``; off: they are marked failed with the reason).
Adoption is a compare-and-set on the job row, so of several gateway replicas exactly one resumes it.

**Promotion and rollback** hot-swap the version on every replica (serving.swap) under the promotion lock
of the plugin, then record it, audited with the reason. A version that failed the gate needs
``override_gate`` and a reason. At start the gateway brings the replicas to the registered champions.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from memory.db import transaction
from memory.locks import PROMOTION_LOCK, LockBusy, hold
from memory.records import AccessDenied, Conflict, InvalidInput, NotFound, Records
from memory.schema import AdapterStatus, FineTuneJob, JobStatus, Role
from memory.users import Principal
from models.adapters import WEIGHTS_FILE, file_sha256
from serving.swap import AdapterSwap, InProcessSwap, ServeSwap
from tools.finetune.refresh import OUTCOME_FILE, RefreshPlan, RefreshStopped, run_refresh

log = logging.getLogger(__name__)
SYSTEM = "finetune-runner"


@dataclass(frozen=True)
class JobRequest:
    plugin: str
    method: str = "all"
    since: datetime | None = None
    min_examples: int | None = None
    epochs: int | None = None
    datasets: tuple[str, ...] = ()  # registered curated datasets (ids) to train on as well
    feedback: bool = True  # False: the curated datasets alone


def datasets_dir(settings: Any) -> Path:
    """The library of registered curated datasets (tools.finetune.curated), beside the jobs' folders."""
    return settings.finetune_dir / "datasets"


def register_dataset(
    records: Records,
    settings: Any,
    pixels: Any,
    path: Path,
    plugin: str,
    *,
    name: str | None = None,
    confined: bool = False,
):
    """Register a curated JSONL file for ``plugin`` (the CLI's and the API's one way), audited in the
    caller's transaction as ``dataset.write`` by the records' actor. Raises tools.finetune's
    DatasetError (each bad row named by ``file:line``) or DatasetExists."""
    from memory import audit
    from tools.finetune.curated import add_curated

    _admin_only(records)
    entry = add_curated(
        datasets_dir(settings),
        path,
        pixels,
        plugin,
        registered_by=records.actor.name,
        name=name,
        heldout_fraction=settings.finetune.heldout_fraction,
        confined=confined,
    )
    detail = {"plugin": plugin, "name": entry.name, "rows": entry.rows, "digest": entry.digest}
    audit.append(
        records.session,
        actor=records.actor,
        action="dataset.write",
        resource="dataset",
        resource_id=entry.id,
        detail=detail,
    )
    return entry


def _admin_only(records: Records) -> None:
    if records.actor.role is not Role.admin:
        raise AccessDenied("curated datasets are for admins")


def list_datasets(records: Records, settings: Any, plugin: str | None = None) -> list:
    """Registered curated datasets, oldest first; the listing is audited (``dataset.read``)."""
    from memory import audit
    from tools.finetune.curated import list_curated

    _admin_only(records)
    found = list_curated(datasets_dir(settings), plugin)
    audit.append(
        records.session,
        actor=records.actor,
        action="dataset.read",
        resource="dataset",
        resource_id=plugin or "*",
        detail={"count": len(found)},
    )
    return found


class FineTuneService:
    """Starts, supervises, resumes and cancels jobs; promotes and rolls back adapter versions."""

    def __init__(self, services: Any, swap: AdapterSwap | None = None) -> None:
        self.services = services
        self.settings = services.settings
        self.config = self.settings.finetune
        self.swap = swap or _default_swap(services.model)
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._threads: dict[int, threading.Thread] = {}
        self._stops: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self.base_spec: dict[str, Any] | None = None

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Bring the replicas to the registered champions, adopt orphaned jobs, then watch for more
        orphans — all from a thread of its own: inside a Serve replica the constructor runs in an event
        loop, where blocking calls to the model deployment's handle are refused."""
        self._watcher = threading.Thread(target=self._watch, name="finetune-watch", daemon=True)
        self._watcher.start()

    def _first_round(self) -> None:
        try:
            self.sync_champions()
        except Exception:
            log.exception("could not bring the replicas to the registered champions")
        self.adopt_orphans()

    def close(self, timeout_s: float = 10.0) -> None:
        """Leave running jobs to the next gateway: each supervisor stops its trainer and ends as
        orphaned, writing nothing more (a cancel would end a job an operator never cancelled)."""
        self._closed.set()
        for thread in list(self._threads.values()):
            thread.join(timeout_s)

    def _watch(self) -> None:
        try:
            self._first_round()
        except Exception:
            log.exception("adopting orphaned fine-tune jobs failed")
        while not self._closed.wait(max(self.config.stale_after_s / 2, 1.0)):
            try:
                self.adopt_orphans()
            except Exception:
                log.exception("adopting orphaned fine-tune jobs failed")

    # -- records helpers ----------------------------------------------------------------------------
    def _records(self, principal: Principal):
        from serving.turns import records_for

        return records_for(self.services, principal)

    def _system(self, session) -> Principal:
        from memory.users import cli_operator

        return cli_operator(session)

    def _as_owner(self, job_id: int) -> Any:
        """A transaction acting for the admin who asked for the job (their principal in the audit)."""
        return _OwnerRecords(self.services, job_id)

    # -- jobs ---------------------------------------------------------------------------------------
    def submit(self, principal: Principal, request: JobRequest) -> FineTuneJob:
        model_info = self.services.model.info()
        if request.plugin not in model_info.adapter_versions:
            raise InvalidInput(
                f"unknown plugin {request.plugin!r}; the model has {sorted(model_info.plugins)}"
            )
        self._check_datasets(request)
        token = self.services.backends.locks.acquire(_job_lock(request.plugin), self._lock_ttl())
        if token is None:
            raise Conflict(f"a fine-tune of {request.plugin} is already running; one job per plugin")
        config = {
            "method": request.method,
            "since": request.since.isoformat() if request.since else None,
            "min_examples": request.min_examples or self.config.min_examples,
            "epochs": request.epochs,
            "datasets": list(request.datasets),
            "feedback": request.feedback,
        }
        try:
            # Curated rows are files: read before the transaction, whose audit rows hold the chain's head.
            selection = self._selection_args(config)
            with self._records(principal) as records:
                if records.active_jobs(request.plugin):
                    raise Conflict(f"a fine-tune of {request.plugin} is already running; one job per plugin")
                champion = self._ensure_champion(records, request.plugin, model_info.adapter_versions)
                shortfall = self._shortfall(records, request.plugin, champion.version, config, selection)
                if shortfall is None:
                    job = records.create_job(request.plugin, config, champion_version=champion.version)
                    records.touch_job(job.id, runner=self.runner_id)
            # Refused after the transaction commits: the feedback it counted was read, and that is audited.
            if shortfall is not None:
                raise InvalidInput(shortfall)
        except BaseException:
            self.services.backends.locks.release(_job_lock(request.plugin), token)
            raise
        self.services.backends.events.publish(job.id, "queued", {"plugin": job.plugin, "config": config})
        self._launch(job.id, token)
        return job

    def _check_datasets(self, request: JobRequest) -> None:
        """Named datasets exist and are the plugin's; a job without feedback names at least one."""
        from tools.finetune.curated import UnknownDataset, find_curated

        if not request.feedback and not request.datasets:
            raise InvalidInput("datasets: a job with feedback=false trains on curated datasets; name one")
        for dataset_id in request.datasets:
            try:
                entry = find_curated(datasets_dir(self.settings), dataset_id)
            except UnknownDataset as exc:
                raise InvalidInput(f"datasets: {exc}") from exc
            if entry.plugin != request.plugin:
                raise InvalidInput(
                    f"datasets: {dataset_id} was registered for {entry.plugin}, not {request.plugin}"
                )

    def _selection_args(self, config: dict) -> dict[str, Any]:
        """What a job of ``config`` selects besides the champion: its date, curated datasets, feedback."""
        from memory.records import _as_utc
        from tools.finetune.curated import curated_rows

        since = _as_utc(datetime.fromisoformat(config["since"])) if config.get("since") else None
        library, pixels = datasets_dir(self.settings), self.services.pixels
        curated = {name: curated_rows(library, name, pixels) for name in config.get("datasets") or ()}
        return {"since": since, "curated": curated, "feedback": config.get("feedback", True)}

    def _shortfall(
        self, records: Records, plugin: str, champion_version: str, config: dict, selection: dict[str, Any]
    ) -> str | None:
        """Why a job of ``config`` could not train, counted as its worker will count (feedback only grows
        until the job snapshots it), or None. Saves the admin a job that starts only to fail."""
        from tools.finetune.dataset import split_of
        from tools.finetune.feedback import select_rows
        from tools.finetune.refresh import METHOD_KINDS, too_few_rows

        kinds = METHOD_KINDS[config.get("method") or "all"]
        rows = select_rows(
            records, plugin, self.services.pixels, since_version=champion_version, **selection
        ).rows
        fraction = self.config.heldout_fraction
        count = sum(1 for row in rows if row.kind in kinds and split_of(row.group, fraction) == "train")
        return too_few_rows(count, config.get("method") or "all", int(config["min_examples"]))

    def _ensure_champion(self, records: Records, plugin: str, serving: dict[str, str]):
        """The registered champion; the base plugin is registered as the first champion when none is."""
        champion = records.champion(plugin)
        if champion is not None:
            return champion
        spec = self._base_spec()
        files = [str(f) for f in spec["plugins"][plugin]["weights"]]
        return records.register_adapter(
            plugin,
            serving[plugin],
            files,
            metrics={"origin": "base model"},
            status=AdapterStatus.champion,
            gate_passed=True,
        )

    def _base_spec(self) -> dict[str, Any]:
        """The base ModelSpec: the in-process model's (as it was loaded), else the settings'."""
        if self.base_spec is None:
            model = getattr(self.services.model, "model", None)
            if model is not None:
                spec = model.spec.model_copy(deep=True)
                base = {name: p for name, p in spec.plugins.items() if "@" not in name}
                self.base_spec = spec.model_copy(update={"plugins": base}).model_dump(mode="json")
            else:
                from models.tiny import resolve_spec

                spec = resolve_spec(
                    self.settings.model_spec, self.settings.model_dir, self.settings.model_seed
                )
                self.base_spec = spec.model_dump(mode="json")
        return self.base_spec

    def cancel(self, principal: Principal, job_id: int) -> FineTuneJob:
        with self._records(principal) as records:
            job = records.request_cancel(job_id)
        stop = self._stops.get(job_id)
        if stop is not None:
            stop.set()
        if job.status is JobStatus.cancelled:
            self.services.backends.events.publish(
                job_id, "cancelled", {"reason": "cancelled before it started"}
            )
        return job

    def _lock_ttl(self) -> float:
        return max(self.config.stale_after_s, 3 * self.config.heartbeat_s)

    def _launch(self, job_id: int, lock_token: str | None) -> None:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._supervise, args=(job_id, stop, lock_token), name=f"finetune-{job_id}", daemon=True
        )
        with self._lock:
            self._stops[job_id] = stop
            self._threads[job_id] = thread
        thread.start()

    def wait(self, job_id: int, timeout_s: float | None = None) -> None:
        """Block until this gateway's supervisor of ``job_id`` ends (tests, the CLI)."""
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout_s)

    # -- supervision --------------------------------------------------------------------------------
    def _supervise(self, job_id: int, stop: threading.Event, lock_token: str | None) -> None:
        plugin = ""
        try:
            with self._as_owner(job_id) as records:
                job = records.get_job(job_id)
                plugin = job.plugin
                if lock_token is None:  # an adopted job takes the plugin's lock again
                    lock_token = self.services.backends.locks.acquire(_job_lock(plugin), self._lock_ttl())
                    if lock_token is None:
                        log.warning(
                            "job %s: the lock of %s is held; waiting for it to expire", job_id, plugin
                        )
                plan = self._plan(records, job)
                # Still queued: it runs once its worker reports in (a Ray job may wait for resources).
                records.touch_job(job_id, runner=self.runner_id)
            outcome = self._run(job_id, plan, stop, lock_token)
            self._finish(job_id, plan, outcome)
        except RefreshStopped as exc:
            self._end(job_id, JobStatus.cancelled, str(exc) or "cancelled")
        except _Orphaned:
            log.info("job %s: this gateway is closing; another will resume it", job_id)
        except Exception as exc:
            log.exception("fine-tune job %s failed", job_id)
            self._end(job_id, JobStatus.failed, _reason(exc))
        finally:
            if lock_token is not None and plugin:
                self.services.backends.locks.release(_job_lock(plugin), lock_token)
            with self._lock:
                self._stops.pop(job_id, None)
                self._threads.pop(job_id, None)

    def _plan(self, records: Records, job: FineTuneJob) -> RefreshPlan:
        from memory.records import _as_utc
        from tools.finetune.dataset import MANIFEST_FILE, read_manifest
        from tools.finetune.feedback import snapshot_from_records

        work = self.settings.finetune_dir / f"job-{job.id}"
        snapshot = work / "dataset"
        config = job.config or {}
        champion = records.find_adapter(job.champion_version, job.plugin) if job.champion_version else None
        if not (snapshot / MANIFEST_FILE).exists():
            if snapshot.exists():
                shutil.rmtree(snapshot)  # an unfinished snapshot of a gateway that died
            manifest = snapshot_from_records(
                records,
                job.plugin,
                snapshot,
                self.services.pixels,
                since_version=champion.version if champion is not None else None,
                heldout_fraction=self.config.heldout_fraction,
                **self._selection_args(config),
            )
        else:
            manifest = read_manifest(snapshot)
        records.touch_job(job.id)
        job.dataset = {
            "digest": manifest.digest,
            "counts": manifest.counts,
            "skipped": manifest.skipped,
            "curated": manifest.selection.get("curated") or {},
        }
        hyper = {
            "epochs": config.get("epochs") or self.config.epochs,
            "batch_size": self.config.batch_size,
            "lr": self.config.lr,
            "projector_lr": self.config.projector_lr,
            "dropout": self.config.dropout,
            "schedule": self.config.schedule,
            "warmup_ratio": self.config.warmup_ratio,
        }
        created = _as_utc(job.created_at).strftime("%Y%m%d%H%M%S")
        return RefreshPlan(
            job_id=job.id,
            plugin=job.plugin,
            spec=self._base_spec(),
            champion_dir=champion.path if champion is not None else None,
            snapshot_dir=str(snapshot),
            pixel_dir=str(self.services.pixels.root) if manifest.images else None,
            work_dir=str(work),
            version=f"{job.plugin}-{created}-j{job.id}",
            method=config.get("method") or "all",
            min_examples=int(config.get("min_examples") or self.config.min_examples),
            hyper=hyper,
            micro_batch_size=self.config.micro_batch_size,
            seed=self.config.seed,
            gate={
                "heldout_margin": self.config.heldout_margin,
                "regression_tolerance": self.config.regression_tolerance,
                "reliance_min": self.config.reliance_min,
                "reliance_tolerance": self.config.reliance_tolerance,
            },
            regression_dir=str(self.config.regression_set) if self.config.regression_set else None,
            torch_threads=self.config.torch_threads,
        )

    def _run(self, job_id: int, plan: RefreshPlan, stop: threading.Event, lock_token: str | None) -> dict:
        executor = self.config.executor
        if executor == "auto":
            executor = self._auto_executor(job_id)
        if executor == "ray":
            runner: Any = _RayWorker(
                plan,
                self.config.num_workers,
                self.config.use_gpu,
                self.config.cpus_per_worker,
                queue_timeout_s=self.config.queue_timeout_s,
            )
        else:
            runner = _ProcessWorker(plan) if executor == "process" else _ThreadWorker(plan)
        runner.start()
        last_beat = 0.0
        last_progress: dict[str, Any] | None = None
        try:
            while True:
                for kind, data in runner.messages(timeout_s=0.25):
                    self._relay(job_id, kind, data)
                    if kind == "progress":
                        last_progress = data
                if runner.done():
                    for kind, data in runner.messages(timeout_s=0):
                        self._relay(job_id, kind, data)
                    return runner.result()
                now = time.monotonic()
                if now - last_beat >= self.config.heartbeat_s:
                    last_beat = now
                    if self._heartbeat(job_id, last_progress, plan.plugin, lock_token):
                        stop.set()
                if stop.is_set():
                    runner.stop()
                if self._closed.is_set() and not stop.is_set():
                    runner.stop()
                    raise _Orphaned
        finally:
            runner.close()

    def _auto_executor(self, job_id: int) -> str:
        """``auto``: a Ray Train job where the Ray cluster has room for its workers now, else a child
        process. On the embedded profile the replicas hold every CPU of the local Ray (two cores: 1 + 0.5 +
        0.5), so a Ray Train worker would wait ``queue_timeout_s`` for a CPU no one frees; the child process
        shares the machine's cores instead. The choice and its reason are the job's first event."""
        if not _ray_running():
            return "process"
        import ray

        config = self.config
        need = {"CPU": config.cpus_per_worker * config.num_workers}
        if config.use_gpu:
            need["GPU"] = float(config.num_workers)
        free = ray.available_resources()
        if all(free.get(name, 0.0) + 1e-9 >= amount for name, amount in need.items()):
            return "ray"
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in need.items())
        has = ", ".join(f"{free.get(name, 0.0):g} {name}" for name in need)
        reason = (
            f"the Ray cluster has {has} free and a Ray Train job needs {wanted}: training in a child process "
            "of the gateway (finetune.executor: ray waits for room instead, up to finetune.queue_timeout_s)"
        )
        log.info("job %s: %s", job_id, reason)
        self.services.backends.events.publish(job_id, "executor", {"executor": "process", "reason": reason})
        return "process"

    def _relay(self, job_id: int, kind: str, data: dict[str, Any]) -> None:
        events = self.services.backends.events
        if kind == "started":
            with self._as_owner(job_id) as records:
                records.advance_job(job_id, JobStatus.running, "running", runner=self.runner_id)
            events.publish(job_id, "running", {"runner": self.runner_id, **data})
        elif kind == "evaluating":
            with self._as_owner(job_id) as records:
                records.advance_job(job_id, JobStatus.evaluating, "training done; running the gate")
            events.publish(job_id, "evaluating", data)
        elif kind == "progress":
            events.publish(job_id, "progress", data)

    def _heartbeat(self, job_id: int, progress: dict | None, plugin: str, lock_token: str | None) -> bool:
        """Record liveness and progress; True when the job was asked to stop (from any replica)."""
        if lock_token is not None:
            self.services.backends.locks.extend(_job_lock(plugin), lock_token, self._lock_ttl())
        with transaction(self.services.sessions) as session:
            job = session.get(FineTuneJob, job_id)
            if job is None:
                return True
            if progress is not None:
                job.progress = progress
            job.updated_at = datetime.now(UTC)
            return bool(job.cancel_requested)

    def _finish(self, job_id: int, plan: RefreshPlan, outcome: dict[str, Any]) -> None:
        """Store the challenger content-addressed and register it: candidate (gate passed) or rejected."""
        gate = outcome["gate"]
        passed = bool(gate["passed"])
        staged = Path(outcome["adapter_dir"])
        sha256 = file_sha256(staged / WEIGHTS_FILE)
        home = self.settings.adapter_dir / plan.plugin / sha256
        if not home.exists():
            home.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(staged, home.with_name(home.name + ".partial"), dirs_exist_ok=True)
            os.replace(home.with_name(home.name + ".partial"), home)
        status = AdapterStatus.candidate if passed else AdapterStatus.rejected
        with self._as_owner(job_id) as records:
            job = records.get_job(job_id)
            parent = records.find_adapter(job.champion_version, plan.plugin) if job.champion_version else None
            adapter = records.register_adapter(
                plan.plugin,
                plan.version,
                [str(home / WEIGHTS_FILE)],
                parent_id=parent.id if parent else None,
                metrics={"train": outcome["train"], "gate_passed": passed, "job_id": job_id},
                path=str(home),
                sha256=sha256,
                status=status,
                gate_passed=passed,
            )
            final = JobStatus.succeeded if passed else JobStatus.rejected
            message = "gate passed: a candidate" if passed else "gate failed: rejected, never served"
            records.advance_job(
                job_id,
                final,
                message,
                gate=gate,
                result_adapter_id=adapter.id,
                progress=_final_progress(records.get_job(job_id).progress, outcome),
            )
        shutil.rmtree(staged, ignore_errors=True)
        self.services.backends.events.publish(
            job_id,
            str(final),
            {
                "candidate_version": plan.version,
                "passed": passed,
                "sha256": sha256,
                "train": outcome["train"],
            },
        )

    def _end(self, job_id: int, status: JobStatus, reason: str) -> None:
        try:
            with self._as_owner(job_id) as records:
                job = records.get_job(job_id)
                if job.status in (
                    JobStatus.succeeded,
                    JobStatus.rejected,
                    JobStatus.failed,
                    JobStatus.cancelled,
                ):
                    return
                records.advance_job(
                    job_id, status, reason[:2000], error=reason if status is JobStatus.failed else None
                )
        finally:
            self.services.backends.events.publish(job_id, str(status), {"reason": reason})

    # -- restarts -----------------------------------------------------------------------------------
    def adopt_orphans(self) -> list[int]:
        """Jobs whose runner stopped beating: resumed here (or failed, per ``resume_on_start``)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.config.stale_after_s)
        adopted = []
        with transaction(self.services.sessions) as session:
            candidates = [
                (job.id, job.runner, job.updated_at)
                for job in Records(session, self._system(session)).active_jobs()
                if job.id not in self._threads and _aware(job.updated_at) < cutoff
            ]
        for job_id, runner, updated_at in candidates:
            with transaction(self.services.sessions) as session:
                claimed = session.execute(
                    update(FineTuneJob)
                    .where(FineTuneJob.id == job_id, FineTuneJob.updated_at == updated_at)
                    .where(FineTuneJob.runner.is_(None) if runner is None else FineTuneJob.runner == runner)
                    .values(runner=self.runner_id, updated_at=datetime.now(UTC))
                ).rowcount
            if claimed != 1:
                continue  # another gateway adopted it first
            adopted.append(job_id)
            reason = f"its runner {runner or '(none)'} stopped (gateway restart)"
            if not self.config.resume_on_start:
                self._end(job_id, JobStatus.failed, reason)
                continue
            with self._as_owner(job_id) as records:
                job = records.get_job(job_id)
                if job.cancel_requested:
                    records.advance_job(job_id, JobStatus.cancelled, "cancelled while its runner was away")
                    self.services.backends.events.publish(job_id, "cancelled", {"reason": reason})
                    continue
                if job.status is not JobStatus.queued:
                    records.advance_job(job_id, JobStatus.queued, f"resumed: {reason}")
            self.services.backends.events.publish(
                job_id, "resumed", {"reason": reason, "runner": self.runner_id}
            )
            self._launch(job_id, None)
        return adopted

    # -- promotion ----------------------------------------------------------------------------------
    def promote(self, principal: Principal, version: str, reason: str, override_gate: bool = False):
        with self._records(principal) as records:
            target = records.find_adapter(version)
            plugin = target.plugin
        return self._make_champion(principal, plugin, version, reason, override_gate, "promote")

    def rollback(self, principal: Principal, plugin: str, reason: str):
        with self._records(principal) as records:
            current = records.champion(plugin)
            previous = records.previous_champion(plugin)
            if current is None or previous is None:
                raise Conflict(f"{plugin} has no earlier champion to roll back to")
            version = previous.version
        return self._make_champion(principal, plugin, version, reason, True, "rollback")

    def _make_champion(
        self, principal: Principal, plugin: str, version: str, reason: str, override_gate: bool, action: str
    ):
        """Under the plugin's promotion lock: check, hot-swap every replica, then record (audited)."""
        try:
            with hold(self.services.backends.locks, f"{PROMOTION_LOCK}:{plugin}", ttl_s=600, wait_s=5):
                with self._records(principal) as records:
                    target = records.find_adapter(version, plugin)
                    if target.status is AdapterStatus.champion:
                        raise Conflict(f"{plugin} {version} is the champion already")
                    if action == "promote" and target.gate_passed is not True and not override_gate:
                        raise Conflict(
                            f"{plugin} {version} did not pass the evaluation gate: promoting it needs "
                            "override_gate=true and a reason"
                        )
                    files, sha256 = list(target.files), target.sha256
                self.swap.apply(plugin, version, files, sha256)
                with self._records(principal) as records:
                    target = records.find_adapter(version, plugin)
                    adapter, previous = records.promote_adapter(
                        target.id, reason, override_gate=override_gate, action=action
                    )
                    return adapter, previous
        except LockBusy as exc:
            raise Conflict(f"another promotion of {plugin} is in progress; try again") from exc

    def sync_champions(self) -> None:
        """Serve the registered champions (after a restart the replicas start on the base weights)."""
        serving = self.services.model.info().adapter_versions
        with transaction(self.services.sessions) as session:
            records = Records(session, self._system(session))
            champions = [records.champion(plugin) for plugin in serving]
            wanted = [(c.plugin, c.version, list(c.files), c.sha256) for c in champions if c is not None]
        for plugin, version, files, sha256 in wanted:
            if serving.get(plugin) != version:
                self.swap.apply(plugin, version, files, sha256)


class QueueTimeout(RuntimeError):
    """A Ray job found no room for its workers before ``finetune.queue_timeout_s``."""


class _Orphaned(Exception):
    """The gateway is closing while the job runs: left for the next gateway to adopt."""


class _OwnerRecords:
    """A records transaction acting for the job's requester (else the CLI operator)."""

    def __init__(self, services: Any, job_id: int) -> None:
        self.services, self.job_id = services, job_id

    def __enter__(self) -> Records:
        from memory.schema import User
        from memory.users import cli_operator

        self._context = transaction(self.services.sessions)
        session = self._context.__enter__()
        job = session.get(FineTuneJob, self.job_id)
        if job is None:
            self._context.__exit__(None, None, None)
            raise NotFound(f"no fine-tune job {self.job_id}")
        user = session.get(User, job.requested_by)
        actor = (
            Principal(user.id, user.name, user.role)
            if user is not None and user.role is Role.admin
            else cli_operator(session)
        )
        return Records(session, actor, admin_phi_access=False)

    def __exit__(self, *exc_info) -> bool | None:
        return self._context.__exit__(*exc_info)


# -- workers --------------------------------------------------------------------------------------------
class _ThreadWorker:
    def __init__(self, plan: RefreshPlan) -> None:
        self.plan = plan
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._outcome: dict | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._body, name=f"refresh-{plan.job_id}", daemon=True)

    def _body(self) -> None:
        try:
            self._outcome = run_refresh(self.plan, lambda k, d: self._queue.put((k, d)), self._stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
            self._error = exc

    def start(self) -> None:
        self._thread.start()

    def messages(self, timeout_s: float):
        return _drain(self._queue, timeout_s)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def result(self) -> dict:
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome

    def close(self) -> None:
        self._stop.set()


def _process_main(plan: RefreshPlan, messages, stop) -> None:
    try:
        run_refresh(plan, lambda k, d: messages.put((k, d)), stop.is_set)
    except RefreshStopped as exc:
        messages.put(("__stopped__", {"reason": str(exc)}))
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor
        messages.put(("__error__", {"reason": _reason(exc)}))


class _ProcessWorker:
    """A spawned child process: the gateway's own threads and GIL stay free for serving."""

    def __init__(self, plan: RefreshPlan) -> None:
        self.plan = plan
        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue()
        self._stop = context.Event()
        self._process = context.Process(
            target=_process_main,
            args=(plan, self._queue, self._stop),
            name=f"refresh-{plan.job_id}",
            daemon=True,
        )
        self._final: tuple[str, dict] | None = None

    def start(self) -> None:
        self._process.start()

    def messages(self, timeout_s: float):
        for kind, data in _drain(self._queue, timeout_s):
            if kind.startswith("__"):
                self._final = (kind, data)
            else:
                yield kind, data

    def done(self) -> bool:
        return not self._process.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def result(self) -> dict:
        self._process.join(5)
        if self._final is not None:
            kind, data = self._final
            if kind == "__stopped__":
                raise RefreshStopped(data["reason"])
            raise RuntimeError(data["reason"])
        outcome = Path(self.plan.work_dir) / OUTCOME_FILE
        if self._process.exitcode == 0 and outcome.is_file():
            return json.loads(outcome.read_text())
        raise RuntimeError(f"the training worker died (exit code {self._process.exitcode})")

    def close(self) -> None:
        if self._process.is_alive():
            self._stop.set()
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
        self._queue.close()


def _ray_loop(config: dict) -> None:
    """The Ray Train worker: rank 0 runs the refresh; progress goes back on the job's queue."""
    import ray.train

    plan: RefreshPlan = config["plan"]
    messages, control = config["messages"], config["control"]
    if ray.train.get_context().get_world_rank() != 0:
        return

    def stopped() -> bool:
        return bool(ray.get(control.stopped.remote()))

    try:
        run_refresh(plan, lambda k, d: messages.put((k, d)), stopped)
    except RefreshStopped as exc:
        messages.put(("__stopped__", {"reason": str(exc)}))
    except Exception as exc:
        # The job's reason is the worker's own (as the process executor reports it), not Ray Train's
        # wrapped traceback; raising on still marks the Ray Train run failed.
        messages.put(("__error__", {"reason": _reason(exc)}))
        raise


class _RayWorker:
    """A Ray Train ``TorchTrainer`` (workers and GPUs from settings), fitted in a thread of its own.

    Ray Train waits as long as it takes for its workers' resources. So that a job on a cluster without
    room does not wait forever, the thread first reserves the same resources as a placement group of its
    own, for at most ``queue_timeout_s``; the job fails with what it asked for and what was free when the
    wait ran out, and nothing is left waiting in the cluster. The reservation is released just before
    Ray Train asks for it again."""

    def __init__(
        self,
        plan: RefreshPlan,
        num_workers: int = 1,
        use_gpu: bool = False,
        cpus: float = 1.0,
        *,
        queue_timeout_s: float = 900.0,
    ) -> None:
        self.plan = plan
        self.num_workers, self.use_gpu, self.cpus = num_workers, use_gpu, cpus
        self.queue_timeout_s = queue_timeout_s
        self._final: tuple[str, dict] | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def _bundle(self) -> dict[str, float]:
        return {"CPU": self.cpus, **({"GPU": 1.0} if self.use_gpu else {})}

    def _wait_for_room(self) -> None:
        """Return once the cluster can place every worker; raise when cancelled or past the deadline."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        bundle = self._bundle()
        group = placement_group([bundle] * self.num_workers, strategy="PACK")  # ScalingConfig's default
        deadline = time.monotonic() + self.queue_timeout_s
        try:
            while not group.wait(timeout_seconds=max(0.05, min(1.0, deadline - time.monotonic()))):
                if self._stopping.is_set():
                    raise RefreshStopped("cancelled while waiting for resources")
                if time.monotonic() >= deadline:
                    wanted = ", ".join(f"{value:g} {name}" for name, value in bundle.items())
                    free = ray.available_resources()
                    has = ", ".join(f"{free.get(name, 0):g} {name}" for name in bundle)
                    raise QueueTimeout(
                        f"waited {self.queue_timeout_s:g} s (finetune.queue_timeout_s) for "
                        f"{self.num_workers} Ray Train worker(s) of {wanted} each; the cluster had "
                        f"{has} free"
                    )
        finally:
            remove_placement_group(group)

    def start(self) -> None:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Queue

        @ray.remote(num_cpus=0)
        class Control:
            def __init__(self) -> None:
                self._stopped = False

            def stop(self) -> None:
                self._stopped = True

            def stopped(self) -> bool:
                return self._stopped

        self._messages = Queue(actor_options={"num_cpus": 0})
        self._control = Control.remote()
        trainer = TorchTrainer(
            _ray_loop,
            train_loop_config={"plan": self.plan, "messages": self._messages, "control": self._control},
            scaling_config=ScalingConfig(
                num_workers=self.num_workers, use_gpu=self.use_gpu, resources_per_worker={"CPU": self.cpus}
            ),
            run_config=RunConfig(
                name=f"healthagent-finetune-{self.plan.job_id}",
                storage_path=str(Path(self.plan.work_dir) / "ray"),
                failure_config=FailureConfig(max_failures=0),  # a killed worker fails the job
            ),
        )

        def fit() -> None:
            try:
                self._wait_for_room()
                trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
                self._error = exc

        self._thread = threading.Thread(target=fit, name=f"ray-train-{self.plan.job_id}", daemon=True)
        self._thread.start()

    def messages(self, timeout_s: float):
        from ray.util.queue import Empty

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                kind, data = self._messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                return
            if kind.startswith("__"):
                self._final = (kind, data)
            else:
                yield kind, data
            if time.monotonic() >= deadline:
                return

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()
        self._control.stop.remote()

    def result(self) -> dict:
        if self._final is not None and self._final[0] == "__stopped__":
            raise RefreshStopped(self._final[1]["reason"])
        if self._final is not None and self._final[0] == "__error__":
            raise RuntimeError(self._final[1]["reason"])
        if isinstance(self._error, RefreshStopped | QueueTimeout):
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"the Ray Train worker failed: {_reason(self._error)}")
        outcome = Path(self.plan.work_dir) / OUTCOME_FILE
        if not outcome.is_file():
            raise RuntimeError("the Ray Train worker ended without an outcome")
        return json.loads(outcome.read_text())

    def close(self) -> None:
        import ray

        for actor in (getattr(self, "_control", None),):
            if actor is not None:
                ray.kill(actor)
        messages = getattr(self, "_messages", None)
        if messages is not None:
            messages.shutdown()


def _drain(source, timeout_s: float):
    try:
        yield source.get(timeout=timeout_s) if timeout_s > 0 else source.get_nowait()
    except (queue.Empty, EOFError, OSError):
        return
    while True:
        try:
            yield source.get_nowait()
        except (queue.Empty, EOFError, OSError):
            return


def _ray_running() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return ray.is_initialized()


def _default_swap(model: Any) -> AdapterSwap:
    if hasattr(model, "engine") and hasattr(model, "model"):
        return InProcessSwap(model)
    return ServeSwap()


def _job_lock(plugin: str) -> str:
    return f"finetune:{plugin}"


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:2000]


def _final_progress(progress: dict | None, outcome: dict) -> dict:
    train = outcome["train"]
    return {
        **(progress or {}),
        "step": train["steps"],
        "total_steps": train["total_steps"],
        "eta_seconds": 0.0,
        "loss": train["loss_last"],
    }
