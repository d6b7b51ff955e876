"""The ``healthagent`` command."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from serving.admin_cli import audit_app, prune_command, users_app
from serving.dicom_cli import dicom_app
from serving.model_cli import model_app
from serving.pacs_cli import pacs_app
from serving.settings import Settings, load_settings
from serving.specialists_cli import intent_command, qc_command
from serving.triage_cli import kb_check_command, triage_command

app = typer.Typer(
    help="Health Agent: HealthGPT behind Ray Serve and a LangGraph agent.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(dicom_app, name="dicom")
app.add_typer(pacs_app, name="pacs")
db_app.command("prune")(prune_command)
app.command("triage")(triage_command)
app.command("triage-kb")(kb_check_command)
app.command("intent")(intent_command)
app.command("qc")(qc_command)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Settings YAML (default: $HEALTHAGENT_CONFIG, else built-in defaults)."
    ),
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        settings = load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"settings: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    return settings.with_absolute_paths()


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    serve_config: Annotated[
        Path | None,
        typer.Option(
            "--serve-config",
            help="A Ray Serve config (configs/serve/*.yaml): settings file, overrides, deployment options.",
        ),
    ] = None,
) -> None:
    """Start the Ray Serve application (HealthGPT + gateway) and block until interrupted."""
    overrides: dict[str, dict] = {}
    args: dict = {}
    if serve_config is not None:
        from serving.deployments import load_serve_config

        try:
            args, overrides, http = load_serve_config(serve_config)
        except (OSError, ValueError) as exc:
            typer.secho(f"serve config: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        config = config or args.pop("config", None)
        args.pop("config", None)
        host, port = host or http.get("host"), port or http.get("port")
    settings = _settings(config, host=host, port=port, **args)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home from a clinic
    started = time.perf_counter()

    from memory.db import make_session_factory, transaction
    from memory.migrate import SchemaOutOfDate
    from memory.users import new_token, set_bootstrap_token
    from models.tiny import resolve_spec
    from serving.services import prepare_database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        engine = prepare_database(settings)
    except SchemaOutOfDate as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    # The red-flag screen must load before any message is taken: a broken knowledge base is named here,
    # not found by the first patient.
    from tools.triage import KnowledgeError, knowledge_base

    try:
        knowledge_base()
    except KnowledgeError as exc:
        typer.secho(f"triage knowledge base: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    token_given = settings.bootstrap_token is not None
    token = settings.bootstrap_token.get_secret_value() if token_given else new_token()
    with transaction(make_session_factory(engine)) as session:
        set_bootstrap_token(session, token)
    engine.dispose()
    # Build the demo model once here so that replicas only load it.
    resolve_spec(settings.model_spec, settings.model_dir, settings.model_seed)
    if settings.cascade.enabled and settings.escalation_model_spec:
        resolve_spec(settings.escalation_model_spec, settings.model_dir, settings.escalation_model_seed)

    import ray
    from ray import serve

    from serving.deployments import build_application

    ray.init(
        address=settings.ray.address,
        num_cpus=settings.ray.num_cpus if settings.ray.address is None else None,
        include_dashboard=False,
        configure_logging=True,
        logging_level="WARNING",
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(
            build_application(settings, overrides), name="healthagent", route_prefix="/", blocking=False
        )
        url = f"http://{settings.host}:{settings.port}"
        typer.echo(f"Health Agent is ready at {url}  (API docs: {url}/docs)")
        typer.echo(f"started in {time.perf_counter() - started:.1f} s")
        if token_given:
            typer.echo("bootstrap admin token: (from HEALTHAGENT_BOOTSTRAP_TOKEN)")
        else:
            typer.echo(f"bootstrap admin token: {token}")
            typer.echo(
                "  (shown once; it is replaced at the next start unless HEALTHAGENT_BOOTSTRAP_TOKEN is set)"
            )
        sys.stdout.flush()
        stop.wait()
        typer.echo("shutting down ...")
    finally:
        serve.shutdown()
        ray.shutdown()


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Migrate the database to the current schema."""
    from memory.db import make_engine
    from memory.migrate import current_revision, upgrade

    settings = _settings(config)
    engine = make_engine(settings.resolved_database_url)
    before = current_revision(engine)
    upgrade(engine)
    typer.echo(f"database schema: {before or 'empty'} -> {current_revision(engine)}")


if __name__ == "__main__":
    app()
