"""``healthagent serve``: prepare the database and the model, start Ray Serve, wait until the application
is ready, and stop cleanly on SIGINT or SIGTERM at any moment — start-up included.

It never waits silently: replicas that cannot fit the cluster are named before deploying, and a
deployment that does not become ready within ``ray.startup_timeout_s`` is named with Serve's message."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from serving.cli.common import fail, load

if TYPE_CHECKING:
    from serving.settings import Settings

APP_NAME = "healthagent"
PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_SERVE_CONFIG = PROJECT / "configs" / "serve" / "local.yaml"


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: unwind from wherever start-up is, through every ``finally``."""


# Set by the handler before it raises: Python drops an exception raised where it cannot propagate (a
# signal that lands in a garbage collector's __del__ was seen to lose SIGTERM during start-up), so every
# stage of start-up and the idle wait also check this.
_STOP_REQUESTED = threading.Event()


def _stop(signum: int, _frame: object) -> None:
    name = signal.Signals(signum).name
    _STOP_REQUESTED.set()
    typer.echo(f"{name}: shutting down ...")  # now, not after the teardown it starts
    raise Stopped(name)


def _check_stop() -> None:
    """Raise :class:`Stopped` if a signal asked to stop and its own exception was lost on the way."""
    if _STOP_REQUESTED.is_set():
        raise Stopped("signal")


def _stop_on_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)


def _settings_path(value: str | None, serve_config: Path) -> Path | None:
    """A relative ``config`` in a Serve config: from the working directory, else from the project."""
    if value is None:
        return None
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT / path if (PROJECT / path).exists() else path


def _keys(path: str | Path | None) -> set[str]:
    """The top-level keys a settings file sets (none when it is missing: loading it will say so)."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text()) if path else None
    except (OSError, yaml.YAMLError):
        return set()
    return set(loaded) if isinstance(loaded, dict) else set()


def _read_serve_config(
    serve_config: Path, config: Path | None, host: str | None, port: int | None
) -> tuple[Settings, dict[str, dict[str, Any]]]:
    from serving.deployments import load_serve_config

    try:
        args, overrides, http = load_serve_config(serve_config)
    except (OSError, ValueError) as exc:
        fail(f"serve config {serve_config}: {exc}")
    named = args.pop("config", None)
    # The settings file, first found: --config, $HEALTHAGENT_CONFIG, the Serve config's ``config``.
    from serving.settings import CONFIG_ENV

    config = config or (None if os.environ.get(CONFIG_ENV) else _settings_path(named, serve_config))
    # The listening address, first found: --host/--port, HEALTHAGENT_HOST/PORT, the settings file, the
    # Serve config's http_options.
    in_file = _keys(config or os.environ.get(CONFIG_ENV))
    if host is None and "HEALTHAGENT_HOST" not in os.environ and "host" not in in_file:
        host = http.get("host")
    if port is None and "HEALTHAGENT_PORT" not in os.environ and "port" not in in_file:
        port = http.get("port")
    settings = load(config, host=host, port=port, **args)
    return settings, overrides


def _prepare(settings: Settings) -> tuple[str, bool]:
    """Database migrated, knowledge base loaded, bootstrap token set, demo model built: everything that
    can fail for a local reason fails here, before Ray starts. Returns the token and whether it was given."""
    from memory.db import make_session_factory, transaction
    from memory.migrate import SchemaOutOfDate
    from memory.users import new_token, set_bootstrap_token
    from models.tiny import resolve_spec
    from serving.services import prepare_database
    from tools.triage import KnowledgeError, knowledge_base

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        engine = prepare_database(settings)
    except SchemaOutOfDate as exc:
        fail(str(exc))
    # A broken triage knowledge base is named here, not found by the first patient.
    try:
        knowledge_base()
    except KnowledgeError as exc:
        fail(f"triage knowledge base: {exc}")
    given = settings.bootstrap_token is not None
    token = settings.bootstrap_token.get_secret_value() if given else new_token()
    with transaction(make_session_factory(engine)) as session:
        set_bootstrap_token(session, token)
    engine.dispose()
    # Build the demo model once here so that replicas only load it.
    try:
        resolve_spec(settings.model_spec, settings.model_dir, settings.model_seed)
        if settings.cascade.enabled and settings.escalation_model_spec:
            resolve_spec(settings.escalation_model_spec, settings.model_dir, settings.escalation_model_seed)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"model: {exc}")
    return token, given


@contextmanager
def _ray(settings: Settings) -> Iterator[None]:
    import ray
    from ray import serve

    try:
        ray.init(
            address=settings.ray.address,
            num_cpus=settings.ray.num_cpus if settings.ray.address is None else None,
            include_dashboard=False,
            configure_logging=True,
            logging_level="WARNING",
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        fail(f"ray: cannot start or reach Ray at {settings.ray.address or 'a local instance'}: {exc}")
    _stop_on_signals()  # again: ray.init installs its own SIGTERM handler in a driver
    try:
        _check_stop()
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal while stopping: leave at once
            signal.signal(sig, lambda *_: os._exit(130))
        _bounded(serve.shutdown, SERVE_SHUTDOWN_S, "Serve")
        ray.shutdown()


# Serve's own shutdown waits 30 s for its controller, which a signal sent to the whole process group
# (systemd, docker stop, kill -- -PGID) has already killed along with the replicas; a controller that is
# alive drains and stops well within this.
SERVE_SHUTDOWN_S = 10.0


def _bounded(step: Callable[[], object], timeout_s: float, what: str) -> None:
    """Run a shutdown step for at most ``timeout_s``; past that, say so and go on (it is left behind
    in a daemon thread that dies with the process)."""
    worker = threading.Thread(target=step, name=f"stop-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        typer.echo(f"{what} did not stop within {timeout_s:g} s (its processes may be gone); going on")


def _check_resources(deployments: dict[str, Any], where: Path) -> None:
    import ray

    from serving.placement import DoesNotFit, check_fit, demands

    nodes = [
        {key: float(value) for key, value in node["Resources"].items()}
        for node in ray.nodes()
        if node["Alive"]
    ]
    try:
        check_fit(demands(deployments), nodes, where=str(where))
    except DoesNotFit as exc:
        fail(str(exc))


def _check_port_free(host: str, port: int) -> None:
    """Name a port in use before Ray starts: Serve's proxy would otherwise fail ~20 s later with pages of
    Ray's tracebacks."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        # As the proxy binds (SO_REUSEADDR): a port left in TIME_WAIT by a server just stopped is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(
                    f"port {port} on {host} is in use by another program: stop it, or choose another port "
                    "(--port, HEALTHAGENT_PORT, or make run PORT=…)"
                )
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _wait_until_running(timeout_s: float) -> None:
    """Poll Serve until the application runs; name what failed or what is still not ready."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        _check_stop()
        application = serve.status().applications.get(APP_NAME)
        state = str(application.status) if application else "NOT_STARTED"
        if state.endswith("RUNNING"):
            return
        pending = {
            name: f"{deployment.status}: {deployment.message or 'no message'}"
            for name, deployment in (application.deployments.items() if application else [])
            if not str(deployment.status).endswith("HEALTHY")
        }
        if state.endswith("DEPLOY_FAILED") or time.monotonic() > deadline:
            why = (
                "failed to deploy" if state.endswith("DEPLOY_FAILED") else f"not ready after {timeout_s:g} s"
            )
            details = "; ".join(f"{name} ({text})" for name, text in pending.items())
            fail(f"the application {why}: {details or (application.message if application else state)}")
        time.sleep(0.5)


def _announce(settings: Settings, token: str, token_given: bool, started: float) -> None:
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


def serve_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Settings YAML (default: $HEALTHAGENT_CONFIG, else the one the Serve config names).",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    serve_config: Annotated[
        Path,
        typer.Option(
            "--serve-config",
            help="A Ray Serve config (configs/serve/*.yaml): the settings file, overrides and each "
            "deployment's replicas and resources.",
        ),
    ] = DEFAULT_SERVE_CONFIG,
) -> None:
    """Start the Ray Serve application (HealthGPT + specialists + gateway) and block until interrupted."""
    started = time.perf_counter()
    _stop_on_signals()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home from a clinic
    try:
        settings, overrides = _read_serve_config(serve_config, config, host, port)
        if settings.ray.address is None:  # a local Ray: its HTTP proxy listens on this machine
            _check_port_free(settings.host, settings.port)
        token, token_given = _prepare(settings)
        _check_stop()
        from ray import serve

        from serving.deployments import build_application, configured_deployments

        try:
            deployments = configured_deployments(settings, overrides)
        except ValueError as exc:
            fail(f"serve config {serve_config}: {exc}")
        with _ray(settings):
            if settings.ray.check_resources:
                _check_resources(deployments, serve_config)
            serve.start(http_options={"host": settings.host, "port": settings.port})
            serve._run(
                build_application(settings, overrides), _blocking=False, name=APP_NAME, route_prefix="/"
            )
            _wait_until_running(settings.ray.startup_timeout_s)
            _announce(settings, token, token_given, started)
            while not _STOP_REQUESTED.wait(3600):
                pass
            _check_stop()
    except Stopped:
        pass  # announced by the handler; everything is torn down on the way here
    except SystemExit as leaving:
        # While ray.init runs, Ray's own driver handler turns SIGTERM into SystemExit(15).
        if leaving.code != signal.SIGTERM:
            raise
        typer.echo("SIGTERM: shutting down ...")
    typer.echo("stopped")
