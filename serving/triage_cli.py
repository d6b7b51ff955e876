"""``healthagent triage``: screen messages for red flags from the command line."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tools.triage import TriageResult


def _show(result: TriageResult, json_out: bool) -> None:
    from tools.triage import CATEGORIES

    if json_out:
        typer.echo(json.dumps(result.model_dump(), ensure_ascii=False))
    elif result.red_flag and result.category is not None:
        label = CATEGORIES[result.category]
        typer.echo(f"RED FLAG [{result.category}: {label}]: {'; '.join(result.reasons)}")
    else:
        detail = f" ({'; '.join(result.reasons)})" if result.reasons else ""
        typer.echo(f"no red flag{detail}")


def triage_command(
    text: Annotated[
        str,
        typer.Argument(
            metavar="TEXT", help="The message to screen, or - to read one message per line from stdin."
        ),
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help='Print {"red_flag", "category", "reasons"} as JSON (one per line).')
    ] = False,
) -> None:
    """Screen a message for emergency red flags (rules in English and Chinese, plus similarity)."""
    from tools.triage import triage

    if text != "-":
        _show(triage(text), json_out)
        return
    # Line by line, answering each before reading the next: usable as a filter on a live stream.
    for line in iter(sys.stdin.readline, ""):
        message = line.strip()
        if message:
            _show(triage(message), json_out)
