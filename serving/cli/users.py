"""``healthagent users …``: users, their tokens and care teams, from the shell — on a migrated database,
before or while a server runs. Every change is authorised and audited as the CLI operator."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli.common import ConfigOption, ExpiresOption, JsonFlag, fail, operator_records, parse_duration

if TYPE_CHECKING:
    from memory.records import Records

users_app = typer.Typer(help="Users, their tokens, patients and care teams.", no_args_is_help=True)
care_team_app = typer.Typer(help="Which physicians may see which patients.", no_args_is_help=True)
users_app.add_typer(care_team_app, name="care-team")

UserArgument = Annotated[str, typer.Argument(metavar="USER", help="User name or id.")]


def _user_id(records: Records, name_or_id: str) -> int:
    from sqlalchemy import select

    from memory.records import NotFound
    from memory.schema import User

    column = User.id if name_or_id.isdigit() else User.name
    key: int | str = int(name_or_id) if name_or_id.isdigit() else name_or_id
    user_id = records.session.scalar(select(User.id).where(column == key))
    if user_id is None:
        raise NotFound(f"no user {name_or_id!r}")
    return user_id


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Option("--name", help="Unique user name.")],
    role: Annotated[str, typer.Option("--role", help="patient | physician | admin")],
    expires_in: ExpiresOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a user and print their API token (shown once). A patient also gets a patient record, whose
    id is the ``patient_id`` the API takes."""
    from memory.schema import Role

    try:
        role_value = Role(role)
    except ValueError as exc:
        raise typer.BadParameter("role must be patient, physician or admin", param_hint="--role") from exc
    lifetime = None if expires_in is None else parse_duration(expires_in)
    with operator_records(config) as records:
        user, token = records.create_user(name, role_value, expires_in=lifetime)
        patient_id = records.create_patient(name, user.id).id if role_value is Role.patient else None
    typer.echo(
        f"user {user.id} ({role_value}) created" + (f", patient_id {patient_id}" if patient_id else "")
    )
    typer.echo(f"token: {token}")
    typer.echo("  (shown once; only its hash is stored)")


@users_app.command("list")
def users_list(config: ConfigOption = None, json_out: JsonFlag = False) -> None:
    """Every user: id, name, role, live tokens, patient_id (patients), disabled."""
    with operator_records(config) as records:
        rows = [
            {
                "id": user.id,
                "name": user.name,
                "role": str(user.role),
                "live_tokens": tokens,
                "patient_id": patient_id,
                "disabled": user.disabled,
            }
            for user, tokens, patient_id in records.list_users()
        ]
    if json_out:
        typer.echo(json.dumps(rows))
        return
    typer.echo(f"{'id':>5}  {'name':<24} {'role':<10} {'tokens':>6}  {'patient_id':>10}  status")
    for row in rows:
        status = "disabled" if row["disabled"] else "active"
        patient = "" if row["patient_id"] is None else str(row["patient_id"])
        name, role, tokens = row["name"], row["role"], row["live_tokens"]
        typer.echo(f"{row['id']:>5}  {name:<24} {role:<10} {tokens:>6}  {patient:>10}  {status}")


@users_app.command("token")
def users_token(
    user: UserArgument,
    label: Annotated[str, typer.Option("--label", help="What the token is for (shown in audits).")] = "",
    expires_in: ExpiresOption = None,
    config: ConfigOption = None,
) -> None:
    """Issue one more API token for USER (another device, a script, a rotation); the others stay valid
    until revoked or expired."""
    lifetime = None if expires_in is None else parse_duration(expires_in)
    with operator_records(config) as records:
        token = records.issue_token(_user_id(records, user), label, expires_in=lifetime)
    typer.echo(f"token: {token}")
    lifetime_note = f"; expires in {expires_in}" if expires_in else ""
    typer.echo(f"  (shown once; only its hash is stored){lifetime_note}")


@users_app.command("revoke")
def users_revoke(user: UserArgument, config: ConfigOption = None) -> None:
    """Revoke every token of USER, effective at their next request (the user and their records stay)."""
    with operator_records(config) as records:
        count = records.revoke_tokens(_user_id(records, user))
    typer.echo(f"revoked {count} token(s) of {user}")


@care_team_app.command("add")
def care_team_add(
    physician: Annotated[str, typer.Argument(help="Physician user name or id.")],
    patient: Annotated[str, typer.Argument(help="Patient user name or id (their login).")],
    config: ConfigOption = None,
) -> None:
    """Let PHYSICIAN see PATIENT's records."""
    with operator_records(config) as records:
        patient_record = records.patient_of_user(_user_id(records, patient))
        if patient_record is None:
            fail(f"{patient!r} has no patient record")
        records.add_to_care_team(_user_id(records, physician), patient_record.id)
    typer.echo(f"{physician} now cares for {patient}")
