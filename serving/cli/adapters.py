"""``healthagent adapters …``: H-LoRA adapters offline — train one plugin of a model spec on curated
rows and write it as an adapter folder that ``healthagent model ask --adapter`` (and serving) load."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli.common import JsonFlag, fail
from serving.cli.model import load_model

if TYPE_CHECKING:
    from models.training import Progress

adapters_app = typer.Typer(help="Train H-LoRA adapters offline.", no_args_is_help=True)
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
