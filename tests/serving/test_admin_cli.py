"""`healthagent users|audit|db prune` against a real database."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from memory.db import make_engine, make_session_factory, transaction
from memory.users import authenticate, new_token, set_bootstrap_token
from serving.cli import app
from serving.services import prepare_database
from serving.settings import load_settings

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(f"data_dir: {tmp_path}\ndatabase_url: '{database_url}'\n")
    engine = prepare_database(load_settings(path))
    with transaction(make_session_factory(engine)) as session:
        set_bootstrap_token(session, new_token())
    engine.dispose()
    return path


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_users_care_team_and_audit(config: Path, database_url: str) -> None:
    output = _ok("users", "add", "--name", "dr-who", "--role", "physician", "--config", str(config))
    token = re.search(r"token: (ha_\S+)", output).group(1)
    _ok("users", "add", "--name", "amy", "--role", "patient", "--config", str(config))
    assert "now cares for amy" in _ok("users", "care-team", "add", "dr-who", "amy", "--config", str(config))
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        assert authenticate(session, token).name == "dr-who"
    assert re.search(r"audit log intact: \d+ rows", _ok("audit", "verify", "--config", str(config)))

    duplicate = runner.invoke(
        app, ["users", "add", "--name", "amy", "--role", "patient", "--config", str(config)]
    )
    assert duplicate.exit_code == 2 and "exists" in duplicate.output
    bad_role = runner.invoke(app, ["users", "add", "--name", "x", "--role", "nurse", "--config", str(config)])
    assert bad_role.exit_code == 2

    with engine.begin() as connection:  # an attacker edits the log behind the guard's back
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update"))
        else:
            connection.execute(text("DROP TRIGGER audit_log_no_update"))
        connection.execute(text("UPDATE audit_log SET actor_role = 'patient' WHERE seq = 2"))
    engine.dispose()
    broken = runner.invoke(app, ["audit", "verify", "--config", str(config)])
    assert broken.exit_code == 1 and "BROKEN at row 2" in broken.output


def test_prune_runs(config: Path) -> None:
    assert "pruned 0" in _ok("db", "prune", "--keep-latest", "--config", str(config))


def test_the_first_users_come_before_any_server(tmp_path: Path, database_url: str) -> None:
    """An operator migrates, creates people, lists them and revokes a token — no `serve` ever ran."""
    config = tmp_path / "fresh.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase_url: '{database_url}'\n")
    assert re.search(r"empty -> \d{4}", _ok("db", "upgrade", "--config", str(config)))
    admin = _ok("users", "add", "--name", "first-admin", "--role", "admin", "--config", str(config))
    token = re.search(r"token: (ha_\S+)", admin).group(1)
    patient = _ok("users", "add", "--name", "pat", "--role", "patient", "--config", str(config))
    patient_id = int(re.search(r"patient_id (\d+)", patient).group(1))

    listed = {row["name"]: row for row in json.loads(_ok("users", "list", "--json", "--config", str(config)))}
    assert listed["first-admin"]["role"] == "admin" and listed["first-admin"]["live_tokens"] == 1
    assert listed["pat"]["patient_id"] == patient_id
    assert listed["cli-operator"]["disabled"], "the CLI's own actor can never log in"

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        assert authenticate(session, token).name == "first-admin"
    assert "revoked 1 token(s)" in _ok("users", "revoke", "first-admin", "--config", str(config))
    with sessions() as session:
        assert authenticate(session, token) is None, "revocation is effective at the next request"
        actions = session.execute(
            text(
                "SELECT a.action, u.name FROM audit_log a JOIN users u ON u.id = a.actor_id "
                "WHERE a.action LIKE 'user.%' ORDER BY a.seq"
            )
        ).all()
    engine.dispose()
    assert actions and {name for _, name in actions} == {"cli-operator"}
    assert "user.write" in {action for action, _ in actions} and "user.read" in {a for a, _ in actions}
    missing = runner.invoke(app, ["users", "revoke", "nobody", "--config", str(config)])
    assert missing.exit_code == 2 and "no user 'nobody'" in missing.output


def test_tokens_with_a_lifetime_from_the_shell(config: Path, database_url: str) -> None:
    """`users add --expires-in` and `users token` issue tokens that end on their own; bad durations are
    refused with a message naming the form expected."""
    add = ("users", "add", "--name", "locum", "--role", "physician")
    output = _ok(*add, "--expires-in", "12h", "-c", str(config))
    first = re.search(r"token: (ha_\S+)", output).group(1)
    second_out = _ok("users", "token", "locum", "--label", "tablet", "--expires-in", "2w", "-c", str(config))
    second = re.search(r"token: (ha_\S+)", second_out).group(1)
    assert "expires in 2w" in second_out and first != second
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        rows = session.execute(
            text(
                "SELECT t.label, t.expires_at, t.created_at FROM api_tokens t "
                "JOIN users u ON u.id = t.user_id WHERE u.name = 'locum' ORDER BY t.id"
            )
        ).all()
        assert authenticate(session, first).name == authenticate(session, second).name == "locum"
    engine.dispose()

    def when(value) -> datetime:  # SQLite hands text back from a raw query
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    lifetimes = {label: (when(end) - when(start)).total_seconds() for label, end, start in rows}
    assert lifetimes["initial"] == pytest.approx(12 * 3600, abs=5)
    assert lifetimes["tablet"] == pytest.approx(14 * 86400, abs=5)
    listed = {row["name"]: row for row in json.loads(_ok("users", "list", "--json", "-c", str(config)))}
    assert listed["locum"]["live_tokens"] == 2
    for bad in ("soon", "0d", "12", "-3h"):
        refused = runner.invoke(app, ["users", "token", "locum", "--expires-in", bad, "-c", str(config)])
        assert refused.exit_code == 2 and "not a duration" in refused.output, refused.output
