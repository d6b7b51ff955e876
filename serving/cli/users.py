"""``healthagent users …``, ``healthagent audit …`` and ``healthagent db prune``: administration from the
shell. Each acts as the bootstrap admin, so every change lands in the audit log like an API call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from serving.settings import load_settings

users_app = typer.Typer(help="Users, patients and care teams.", no_args_is_help=True)
care_team_app = typer.Typer(help="Which physicians may see which patients.", no_args_is_help=True)
users_app.add_typer(care_team_app, name="care-team")
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="Settings YAML.")]


@contextmanager
def _records(config: Path | None) -> Iterator:
    from sqlalchemy import select

    from memory.db import make_engine, make_session_factory, transaction
    from memory.migrate import SchemaOutOfDate, require_up_to_date
    from memory.records import RecordError, Records
    from memory.schema import User
    from memory.users import BOOTSTRAP_ADMIN, Principal

    settings = load_settings(config)
    engine = make_engine(settings.resolved_database_url)
    try:
        require_up_to_date(engine)
        with transaction(make_session_factory(engine)) as session:
            admin = session.scalar(select(User).where(User.name == BOOTSTRAP_ADMIN))
            if admin is None:
                raise RecordError(
                    "no admin yet: start `healthagent serve` once to create the bootstrap admin"
                )
            yield Records(session, Principal(admin.id, admin.name, admin.role))
    except (SchemaOutOfDate, RecordError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()


def _user_id(records, name_or_id: str) -> int:
    from sqlalchemy import select

    from memory.records import NotFound
    from memory.schema import User

    query = select(User.id).where(User.id == int(name_or_id)) if name_or_id.isdigit() else None
    user_id = records.session.scalar(
        query if query is not None else select(User.id).where(User.name == name_or_id)
    )
    if user_id is None:
        raise NotFound(f"no user {name_or_id!r}")
    return user_id


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Option("--name", help="Unique user name.")],
    role: Annotated[str, typer.Option("--role", help="patient | physician | admin")],
    config: ConfigOption = None,
) -> None:
    """Create a user and print their API token (shown once). A patient also gets a patient record."""
    from memory.schema import Role

    try:
        role_value = Role(role)
    except ValueError as exc:
        raise typer.BadParameter("role must be patient, physician or admin", param_hint="--role") from exc
    with _records(config) as records:
        user, token = records.create_user(name, role_value)
        patient_id = records.create_patient(name, user.id).id if role_value is Role.patient else None
    typer.echo(
        f"user {user.id} ({role_value}) created" + (f", patient record {patient_id}" if patient_id else "")
    )
    typer.echo(f"token: {token}")
    typer.echo("  (shown once; only its hash is stored)")


@care_team_app.command("add")
def care_team_add(
    physician: Annotated[str, typer.Argument(help="Physician user name or id.")],
    patient: Annotated[str, typer.Argument(help="Patient user name or id (their login).")],
    config: ConfigOption = None,
) -> None:
    """Let PHYSICIAN see PATIENT's records."""
    with _records(config) as records:
        patient_record = records.patient_of_user(_user_id(records, patient))
        if patient_record is None:
            typer.secho(f"{patient!r} has no patient record", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        records.add_to_care_team(_user_id(records, physician), patient_record.id)
    typer.echo(f"{physician} now cares for {patient}")


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the whole chain; name the first bad row. Exit 1 when the chain is broken."""
    with _records(config) as records:
        result = records.verify_audit()
    if result.ok:
        typer.echo(f"audit log intact: {result.checked} rows")
        return
    typer.secho(
        f"audit log BROKEN at row {result.first_bad_seq}: {result.reason}", fg=typer.colors.RED, err=True
    )
    raise typer.Exit(1)


def prune_command(
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

    settings = load_settings(config)
    checkpointer = open_checkpointer(settings.resolved_checkpoint_url)
    try:
        with _records(config) as records:
            count = prune_closed(records, checkpointer.saver)
    finally:
        checkpointer.close()
    typer.echo(f"pruned {count} closed consultation thread(s) to their latest checkpoint")
