"""What every ``healthagent`` command shares: one way to fail, one ``--config`` option, settings loading
and a records session that acts as the CLI operator.

Imports of the project's heavier modules stay inside the functions: ``healthagent --help`` and the
commands that need no model must start in well under two seconds, and torch alone takes several.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from memory.records import Records
    from serving.settings import Settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Settings YAML (default: $HEALTHAGENT_CONFIG, else built-in defaults)."
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``90m``, ``12h``, ``30d``, ``2w`` (one number, one unit) as a positive timedelta."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90m, 12h, 30d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


ExpiresOption = Annotated[
    str | None,
    typer.Option(
        "--expires-in",
        help="The token stops working after this long (90m, 12h, 30d, 2w); default: until revoked.",
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Say what went wrong on stderr, in red, and exit with ``code`` (2: bad input or set-up)."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load(config: Path | None, **overrides: object) -> Settings:
    """The settings, or a clear exit naming the bad file or value; ``None`` overrides are ignored."""
    from serving.settings import load_settings

    try:
        settings = load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except (FileNotFoundError, ValueError) as exc:
        fail(f"settings: {exc}")
    return settings.with_absolute_paths()


@contextmanager
def operator_records(config: Path | None) -> Iterator[Records]:
    """Records in one transaction, acting as the CLI operator (an admin that cannot log in), so every
    change made from the shell is authorised and audited like an API call. Works on a freshly migrated
    database, before any server has run."""
    from memory.db import make_engine, make_session_factory, transaction
    from memory.migrate import SchemaOutOfDate, require_up_to_date
    from memory.records import RecordError, Records
    from memory.users import cli_operator

    settings = load(config)
    engine = make_engine(settings.resolved_database_url)
    try:
        require_up_to_date(engine)
        with transaction(make_session_factory(engine)) as session:
            yield Records(session, cli_operator(session))
    except (SchemaOutOfDate, RecordError) as exc:
        fail(str(exc))
    finally:
        engine.dispose()
