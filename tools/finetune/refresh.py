"""One feedback refresh, start to finish, as a worker runs it: the frozen dataset snapshot in, a trained
challenger adapter and its gate report out.

The worker is the same function wherever it runs (a Ray Train worker, a child process, a thread): it
reads only files (the model spec, the champion adapter, the snapshot, the regression set) and talks back
only through ``report`` (progress, the move to evaluation) and ``should_stop`` (cancellation), so the
process that supervises it owns every database write and event. Nothing here touches the registry or the
serving replicas: a worker that dies leaves the champion as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Method = Literal["sft", "dpo", "kto", "all"]
# Which snapshot rows each method trains on: supervised corrections always, plus correction pairs (DPO)
# and/or thumbs (KTO-style) where asked.
METHOD_KINDS: dict[str, frozenset[str]] = {
    "sft": frozenset({"sft"}),
    "dpo": frozenset({"sft", "pair"}),
    "kto": frozenset({"sft", "kto"}),
    "all": frozenset({"sft", "pair", "kto"}),
}
OUTCOME_FILE = "outcome.json"


def too_few_rows(count: int, method: str, min_examples: int) -> str | None:
    """Why a job cannot train on ``count`` training rows of its method's kinds, or None."""
    if count >= min_examples:
        return None
    return (
        f"{count} training rows for method {method!r} in the job's dataset (feedback since the champion and "
        f"any curated datasets, less the held-out part); the job needs at least {min_examples} (min_examples)"
    )


class RefreshStopped(Exception):
    """Cancelled between two optimizer steps."""


@dataclass(frozen=True)
class RefreshPlan:
    """Everything a worker needs, as plain values (it is pickled to Ray workers and child processes)."""

    job_id: int
    plugin: str
    spec: dict[str, Any]  # the base ModelSpec, as ModelSpec.model_dump(mode="json")
    champion_dir: str | None  # the champion adapter folder; None: the base plugin is the champion
    snapshot_dir: str
    pixel_dir: str | None
    work_dir: str  # checkpoints/ and adapter/ go here
    version: str  # the challenger's version
    method: Method = "all"
    min_examples: int = 1
    hyper: dict[str, Any] = field(default_factory=dict)  # StagePreset overrides (epochs, lr, …)
    micro_batch_size: int = 4
    seed: int = 0
    gate: dict[str, Any] = field(default_factory=dict)  # GateConfig fields
    regression_dir: str | None = None
    torch_threads: int | None = None

    @property
    def adapter_dir(self) -> Path:
        return Path(self.work_dir) / "adapter"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.work_dir) / "checkpoints"


Report = Callable[[str, dict[str, Any]], None]


def run_refresh(plan: RefreshPlan, report: Report, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Train the challenger from the champion on the snapshot's train rows (stage 3 of ``plan.plugin``),
    save it in ``plan.adapter_dir``, and run the gate against the champion on the held-out rows.

    Reports ``("started", {...})`` first, ``("progress", {...})`` after each optimizer step and
    ``("evaluating", {...})`` before the gate; raises :class:`RefreshStopped` when ``should_stop`` says
    so, ``ValueError`` for a dataset it cannot train on. Returns ``{"train": summary, "gate": GateReport
    as JSON, "adapter_dir": path}`` and writes the same to ``work_dir/outcome.json``."""
    import torch

    from memory.pixels import PixelStore
    from models.adapters import METADATA_FILE, with_adapter
    from models.healthgpt import HealthGPT
    from models.spec import ModelSpec
    from models.training import TrainConfig, preset, save_trained, train
    from tools.finetune.dataset import load_snapshot
    from tools.finetune.gate import GateConfig, run_gate
    from tools.finetune.vqa import load_regression_set

    # First word back: the worker has its resources (a Ray job may have queued for them until now).
    report("started", {"version": plan.version, "host": socket.gethostname(), "pid": os.getpid()})
    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    pixels = PixelStore(Path(plan.pixel_dir)) if plan.pixel_dir else None
    snapshot = load_snapshot(Path(plan.snapshot_dir), pixels)  # verified against its manifest
    kinds = METHOD_KINDS[plan.method]
    rows = [row for row in snapshot.train if row.kind in kinds]
    shortfall = too_few_rows(len(rows), plan.method, plan.min_examples)
    if shortfall is not None:
        raise ValueError(shortfall)
    base = ModelSpec.model_validate(plan.spec)
    champion = Path(plan.champion_dir) if plan.champion_dir else None
    spec = with_adapter(base, plan.plugin, champion) if champion is not None else base
    model = HealthGPT(spec)
    hyper = dataclasses.replace(
        preset(3, spec.plugins[plan.plugin].task, spec.template),
        **{key: value for key, value in plan.hyper.items() if value is not None},
    )
    config = TrainConfig(
        plan.plugin,
        stage=3,
        hyper=hyper,
        micro_batch_size=plan.micro_batch_size,
        seed=plan.seed,
        checkpoint_dir=plan.checkpoint_dir,
        checkpoint_every=1,  # a resumed job (gateway restart) loses at most one step
    )
    plan.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def progress(step) -> None:
        report(
            "progress",
            {
                "step": step.step,
                "total_steps": step.total_steps,
                "epoch": step.epoch,
                "loss": round(step.loss, 6),
                "lr": step.lr,
                "tokens_per_second": round(step.tokens_per_second, 1),
                "eta_seconds": round(step.eta_seconds, 1),
            },
        )

    result = train(model, rows, config, progress=progress, should_stop=should_stop)
    if not result.completed:
        raise RefreshStopped(f"stopped at step {result.steps} of {result.total_steps}")
    if (plan.adapter_dir / METADATA_FILE).exists():  # a resumed run that had saved already
        import shutil

        shutil.rmtree(plan.adapter_dir)
    save_trained(model, result, plan.adapter_dir, plan.version, parent=spec.adapter_version)
    report("evaluating", {"train": result.summary()})
    # The champion's weights back into the resident plugin: one model holds both sides of the gate.
    model.load_plugin_weights(plan.plugin, spec.plugins[plan.plugin])
    regression = load_regression_set(Path(plan.regression_dir)) if plan.regression_dir else None
    gate = run_gate(
        model,
        plan.plugin,
        plan.adapter_dir,
        heldout=snapshot.heldout,
        regression=regression,
        config=GateConfig(**plan.gate),
        heldout_source=snapshot.manifest.digest,
    )
    outcome = {
        "train": result.summary(),
        "gate": json.loads(gate.model_dump_json()),
        "adapter_dir": str(plan.adapter_dir),
    }
    (Path(plan.work_dir) / OUTCOME_FILE).write_text(json.dumps(outcome, indent=2) + "\n")
    return outcome
