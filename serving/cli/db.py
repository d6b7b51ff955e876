"""``healthagent db …``: the database schema and retention."""

from __future__ import annotations

from typing import Annotated

import typer

from serving.cli.common import ConfigOption, load, operator_records

db_app = typer.Typer(help="Database schema and retention.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Migrate the database to the current schema (then `healthagent users add` works at once)."""
    from memory.db import make_engine
    from memory.migrate import current_revision, upgrade

    settings = load(config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        before = current_revision(engine)
        upgrade(engine)
        typer.echo(f"database schema: {before or 'empty'} -> {current_revision(engine)}")
    finally:
        engine.dispose()


@db_app.command("prune")
def db_prune(
    keep_latest: Annotated[
        bool, typer.Option("--keep-latest", help="Keep only each thread's latest checkpoint.")
    ],
    config: ConfigOption = None,
) -> None:
    """Retention: drop old checkpoints of closed consultations."""
    if not keep_latest:
        raise typer.BadParameter("the only strategy is --keep-latest", param_hint="--keep-latest")
    from memory.checkpoints import open_checkpointer
    from memory.threads import prune_closed

    checkpointer = open_checkpointer(load(config).resolved_checkpoint_url)
    try:
        with operator_records(config) as records:
            count = prune_closed(records, checkpointer.saver)
    finally:
        checkpointer.close()
    typer.echo(f"pruned {count} closed consultation thread(s) to their latest checkpoint")
