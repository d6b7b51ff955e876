"""``healthagent adapters …``: H-LoRA adapters offline — train one plugin of a model spec on curated
rows and write it as an adapter folder that ``healthagent model ask --adapter`` (and serving) load."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli.common import ConfigOption, JsonFlag, fail, load, operator_records
from serving.cli.model import load_model

if TYPE_CHECKING:
    from models.training import Progress

adapters_app = typer.Typer(
    help="H-LoRA adapters: train and evaluate offline, the registry and jobs, promote and roll back.",
    no_args_is_help=True,
)
StartOption = Annotated[
    Path | None,
    typer.Option(
        "--adapter", help="Start from this adapter folder (e.g. the champion), not the spec's files."
    ),
]


class ProgressBar:
    """Step, loss, tokens/s and ETA on stderr: redrawn in place on a terminal, a line per tenth otherwise
    (logs), so stdout stays clean for ``--json``."""

    def __init__(self, width: int = 28) -> None:
        self.width = width
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, progress: Progress) -> None:
        tenth = progress.step * 10 // progress.total_steps
        last = progress.step == progress.total_steps
        if not self.tty and tenth == self.shown and not last:
            return
        self.shown = tenth
        filled = self.width * progress.step // progress.total_steps
        eta = int(progress.eta_seconds)
        bar = "#" * filled + "." * (self.width - filled)
        line = (
            f"[{bar}] step {progress.step}/{progress.total_steps}  loss {progress.loss:.4f}"
            f"  {progress.tokens_per_second:,.0f} tok/s  ETA {eta // 60}:{eta % 60:02d}"
        )
        if self.tty:
            typer.echo("\r" + line, err=True, nl=last)
        else:
            typer.echo(line, err=True)


@adapters_app.command("train")
def train_command(
    spec: Annotated[
        str, typer.Option("--spec", help="Model spec YAML, or 'tiny' for the seeded demo model.")
    ],
    plugin: Annotated[str, typer.Option("--plugin", help="The plugin to train (from the spec).")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="JSONL: {question, answer, image?} rows; {question, chosen, rejected} pairs add a DPO loss, "
            "{question, answer, desirable} rows a KTO-style loss.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The adapter folder to write (must not hold one).")],
    stage: Annotated[int, typer.Option(min=1, max=3, help="1 alignment, 2 plugin fusion, 3 tuning.")] = 3,
    epochs: Annotated[int | None, typer.Option(min=1, help="Default: the stage preset's.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Global batch (default: paper's).")] = None,
    micro_batch_size: Annotated[int, typer.Option(min=1, help="Rows per forward pass.")] = 4,
    lr: Annotated[float | None, typer.Option(min=0, help="H-LoRA / table learning rate.")] = None,
    projector_lr: Annotated[float | None, typer.Option(min=0, help="Projector learning rate.")] = None,
    dropout: Annotated[float | None, typer.Option(min=0, max=1, help="H-LoRA dropout.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for shuffling and dropout.")] = 0,
    adapter: StartOption = None,
    version: Annotated[str | None, typer.Option(help="Version to record (default: --out's name).")] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Save checkpoints here; a run resumes from one found there.")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between checkpoints.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Train one plugin offline (a feedback refresh is stage 3) and save it as an adapter folder."""
    from dataclasses import replace

    from models.adapters import METADATA_FILE
    from models.training import TrainConfig, preset, read_rows, save_trained, train

    if (out / METADATA_FILE).exists():
        fail(f"{out} already holds an adapter; versions are immutable, choose another --out")
    try:
        rows = read_rows(data)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    model = load_model(spec, adapter, plugin)
    if plugin not in model.spec.plugins:
        fail(f"unknown plugin {plugin!r}; this model has {sorted(model.spec.plugins)}")
    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "projector_lr": projector_lr,
        "dropout": dropout,
    }
    hyper = replace(
        preset(stage, model.spec.plugins[plugin].task, model.spec.template),
        **{key: value for key, value in overrides.items() if value is not None},
    )
    config = TrainConfig(
        plugin,
        stage=stage,
        hyper=hyper,
        micro_batch_size=micro_batch_size,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
    parent = model.spec.adapter_version
    version = version or out.name
    try:
        result = train(model, rows, config, progress=ProgressBar())
        save_trained(model, result, out, version, parent=parent)
    except (ValueError, OSError) as exc:  # bad rows, unreadable images, an existing adapter
        fail(str(exc))
    payload = {**result.summary(), "out": str(out), "version": version, "parent": parent}
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        for key, value in payload.items():
            typer.echo(f"{key}: {value}")


# -- the registry and the jobs (the database) and the live service (its admin API) ----------------------
PluginFilter = Annotated[str | None, typer.Option("--plugin", help="Only this plugin.")]
UrlOption = Annotated[
    str, typer.Option("--url", envvar="HEALTHAGENT_URL", help="The running service (its admin API).")
]
TokenOption = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="HEALTHAGENT_TOKEN",
        help="An admin's API token (prefer the variable).",
        show_default=False,
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")]


@adapters_app.command("list")
def list_command(config: ConfigOption = None, plugin: PluginFilter = None, as_json: JsonFlag = False) -> None:
    """Registered adapter versions: plugin, version, status (candidate, champion, retired, rejected …)."""
    with operator_records(config) as records:
        rows = [
            {
                "id": row.id,
                "plugin": row.plugin,
                "version": row.version,
                "status": str(row.status),
                "gate_passed": row.gate_passed,
                "sha256": row.sha256,
                "created_at": row.created_at.isoformat() if row.created_at else None,
            }
            for row in records.list_adapters(plugin)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no adapter versions registered yet (the first fine-tune registers the base as champion)")
    for row in rows:
        gate = {True: "gate passed", False: "gate FAILED", None: "no gate"}[row["gate_passed"]]
        typer.echo(f"{row['id']:>4}  {row['plugin']:<14} {row['version']:<32} {row['status']:<12} {gate}")


@adapters_app.command("jobs")
def jobs_command(config: ConfigOption = None, plugin: PluginFilter = None, as_json: JsonFlag = False) -> None:
    """Fine-tune jobs, newest first: status, progress, gate outcome, error."""
    with operator_records(config) as records:
        rows = [
            {
                "id": job.id,
                "plugin": job.plugin,
                "status": str(job.status),
                "progress": job.progress,
                "gate_passed": (job.gate or {}).get("passed"),
                "error": job.error,
                "created_at": job.created_at.isoformat() if job.created_at else None,
            }
            for job in records.list_jobs(plugin)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no fine-tune jobs yet")
    for row in rows:
        step = row["progress"] or {}
        where = f"step {step.get('step')}/{step.get('total_steps')}" if step else ""
        gate = {True: "gate passed", False: "gate failed", None: ""}[row["gate_passed"]]
        typer.echo(
            f"{row['id']:>4}  {row['plugin']:<14} {row['status']:<11} {where:<14} {gate} {row['error'] or ''}"
        )


# -- curated datasets (files under the data directory, registrations audited) ----------------------------
datasets_app = typer.Typer(
    help="Curated datasets: {question, answer, image?} JSONL rows a fine-tune trains on besides feedback.",
    no_args_is_help=True,
)
adapters_app.add_typer(datasets_app, name="datasets")


def _dataset_line(entry) -> str:
    split = entry.counts
    return (
        f"{entry.id:<30} {entry.plugin:<14} {entry.rows:>6} rows ({split['train']['sft']} train, "
        f"{split['heldout']['sft']} held out, {entry.images} images)  {entry.name}"
    )


@datasets_app.command("add")
def datasets_add_command(
    file: Annotated[Path, typer.Argument(help="JSONL rows; 'image' paths are relative to the file.")],
    plugin: Annotated[str, typer.Option("--plugin", help="The plugin the rows are for.")],
    name: Annotated[str | None, typer.Option("--name", help="Listed by this (default: the file's).")] = None,
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate FILE (every bad row named by file:line) and register it; name its id in a job's
    ``datasets`` (POST /v1/admin/finetunes) to train on its rows."""
    from memory.pixels import PixelStore
    from serving.finetune import register_dataset
    from tools.finetune.curated import DatasetExists
    from tools.finetune.dataset import DatasetError

    settings = load(config)
    pixels = PixelStore(settings.resolved_pixel_dir, max_bytes=settings.max_upload_bytes)
    try:
        with operator_records(config) as records:
            entry = register_dataset(records, settings, pixels, file, plugin, name=name)
    except DatasetExists as exc:
        fail(str(exc), code=1)
    except DatasetError as exc:
        fail(str(exc))
    typer.echo(entry.model_dump_json() if as_json else f"registered: {_dataset_line(entry)}")


@datasets_app.command("list")
def datasets_list_command(
    config: ConfigOption = None, plugin: PluginFilter = None, as_json: JsonFlag = False
) -> None:
    """Registered curated datasets, oldest first: id, plugin, rows, images, name."""
    from serving.finetune import list_datasets

    settings = load(config)
    with operator_records(config) as records:
        found = list_datasets(records, settings, plugin)
    if as_json:
        typer.echo(json.dumps([json.loads(entry.model_dump_json()) for entry in found]))
        return
    if not found:
        typer.echo("no curated datasets registered (healthagent adapters datasets add FILE --plugin P)")
    for entry in found:
        typer.echo(_dataset_line(entry))


@adapters_app.command("evaluate")
def evaluate_command(
    spec: Annotated[str, typer.Option("--spec", help="Model spec YAML, or 'tiny'.")],
    plugin: Annotated[str, typer.Option("--plugin", help="The plugin both adapters are for.")],
    challenger: Annotated[Path, typer.Option("--challenger", help="The adapter folder to judge.")],
    heldout: Annotated[Path, typer.Option("--heldout", help="JSONL {question, answer, image?} rows.")],
    champion: Annotated[
        Path | None, typer.Option("--champion", help="The adapter folder to beat (default: the spec's).")
    ] = None,
    regression: Annotated[
        Path | None, typer.Option("--regression", help="A frozen VQA regression set (default: shipped).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the evaluation gate offline: held-out log-prob margin, VQA regression, image reliance. Exit 1
    when the challenger fails."""
    from models.training import read_rows
    from tools.finetune.gate import run_gate
    from tools.finetune.vqa import load_regression_set

    try:
        rows = read_rows(heldout)
        regression_set = load_regression_set(regression) if regression else None
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    model = load_model(spec, None, plugin)
    try:
        report = run_gate(
            model, plugin, challenger, heldout=rows, champion=champion, regression=regression_set
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(report.model_dump_json())
    else:
        for check in report.checks:
            figures = f"champion {check.champion} -> challenger {check.challenger}"
            typer.echo(f"{'pass' if check.passed else 'FAIL'}  {check.name}: {figures} ({check.rule})")
        typer.echo("gate passed" if report.passed else "gate FAILED")
    if not report.passed:
        raise typer.Exit(1)


def _admin_call(url: str, token: str, path: str, body: dict) -> dict:
    """Promotion swaps adapters on the live replicas, so it goes through the running service."""
    import httpx

    try:
        response = httpx.post(
            url.rstrip("/") + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach the service at {url}: {exc}")
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        fail(f"{response.status_code}: {detail}")
    return response.json()


@adapters_app.command("promote")
def promote_command(
    version: Annotated[str, typer.Argument(help="The adapter version to make champion.")],
    reason: ReasonOption,
    token: TokenOption,
    url: UrlOption = "http://127.0.0.1:8000",
    override_gate: Annotated[
        bool, typer.Option("--override-gate", help="Promote a version whose gate failed (audited).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make VERSION its plugin's champion on every replica, without downtime (the running service's
    ``POST /v1/admin/adapters/{version}/promote``)."""
    result = _admin_call(
        url,
        token,
        f"/v1/admin/adapters/{version}/promote",
        {"reason": reason, "override_gate": override_gate},
    )
    typer.echo(json.dumps(result) if as_json else f"promoted: {json.dumps(result)}")


@adapters_app.command("rollback")
def rollback_command(
    plugin: Annotated[str, typer.Argument(help="The plugin whose previous champion comes back.")],
    reason: ReasonOption,
    token: TokenOption,
    url: UrlOption = "http://127.0.0.1:8000",
    as_json: JsonFlag = False,
) -> None:
    """Bring back PLUGIN's previous champion on every replica (the service's rollback call)."""
    result = _admin_call(url, token, f"/v1/admin/adapters/{plugin}/rollback", {"reason": reason})
    typer.echo(json.dumps(result) if as_json else f"rolled back: {json.dumps(result)}")
