"""``healthagent triage``: screen messages for red flags and urgency from the command line."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli.common import fail

if TYPE_CHECKING:
    from tools.triage import TriageResult


def _show(result: TriageResult, json_out: bool, text: str) -> None:
    from tools.triage.language import language_name, unscreened_language

    unscreened = unscreened_language(text)
    if json_out:
        shown = {**result.model_dump(), "unscreened_language": unscreened}
        typer.echo(json.dumps(shown, ensure_ascii=False))
        return
    from tools.triage import ADVICE, CATEGORIES

    if unscreened and result.condition is None:  # the rules read English and Chinese: no level means anything
        typer.echo(f"NOT SCREENED: the message looks like {language_name(unscreened)} ({unscreened})")
        typer.echo("  the rules read English and Chinese only; no level can be given")
        return

    if result.condition is not None and result.category is not None:
        head = "RED FLAG" if result.red_flag else result.level.upper().replace("_", " ")
        typer.echo(f"{head} [{result.category}: {CATEGORIES[result.category]}] {result.condition_name}")
    else:
        typer.echo(f"{result.level.upper().replace('_', ' ')}: no condition matched")
    typer.echo(f"  advice: {ADVICE[result.level]['en']}")
    for reason in result.reasons:
        typer.echo(f"  - {reason}")
    for source in result.sources:
        typer.echo(f"  source: {source}")


def triage_command(
    text: Annotated[
        str,
        typer.Argument(
            metavar="TEXT", help="The message to screen, or - to read one message per line from stdin."
        ),
    ],
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help='One JSON object per message: {"red_flag", "category", "level", "condition", "evidence", '
            '"sources", "reasons", "unscreened_language" (a language the rules do not read), ...}.',
        ),
    ] = False,
) -> None:
    """Screen a message: urgency level (emergency / urgent / routine / self_care), the condition, the
    evidence and its sources — English and Chinese, from the knowledge base in tools/triage/kb/. A message
    in another language is marked NOT SCREENED."""
    from tools.triage import KnowledgeError, triage

    if not text.strip():
        fail("error: TEXT is empty; give the message to screen, or - to read messages from stdin")
    try:
        if text != "-":
            _show(triage(text), json_out, text)
            return
        # Line by line, answering each before reading the next: usable as a filter on a live stream.
        for line in iter(sys.stdin.readline, ""):
            message = line.strip()
            if message:
                _show(triage(message), json_out, message)
    except KnowledgeError as exc:
        fail(f"error: the triage knowledge base does not load: {exc}")


def kb_check_command(
    run_tests: Annotated[
        bool, typer.Option("--tests", help="Also run every condition's own test cases through the screen.")
    ] = False,
) -> None:
    """Load the triage knowledge base, compile every pattern, check references and examples."""
    from tools.triage.knowledge import main

    code = main(["tests" if run_tests else "check"])
    if code:
        raise typer.Exit(code)
