"""The public screen on the clinical knowledge base: its fields, bad input, the CLI."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from serving.cli.triage import kb_check_command, triage_command
from tools import triage


def test_an_emergency_has_level_condition_evidence_and_sources() -> None:
    result = triage.triage("I have crushing chest pain spreading to my left arm and I'm sweating")
    assert result.red_flag and result.level == "emergency" and result.category == "cardiac"
    assert result.condition and result.condition_name and result.sources
    assert result.evidence and all(e.status in ("affirmed", "uncertain") for e in result.evidence)
    assert result.reasons[0].startswith(result.condition_name)


def test_red_flag_means_emergency() -> None:
    for text in (
        "I have a mild cold",
        "I want to kill myself tonight, I have the pills ready",
        "我胸口压着痛，出冷汗",
    ):
        result = triage.triage(text)
        assert result.red_flag == (result.level == "emergency")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a" * 100_000,
        "chest pain " * 10_000,
        "\x00\x01\x02\xff binary \ufffd\ufffd",
        "胸痛 chest pain 出汗 sweating مرحبا Привет 🙂",
        "\u202e\u200b\u200d",
    ],
)
def test_bad_input_gets_an_answer_never_a_crash(text: str) -> None:
    result = triage.triage(text)
    assert result.level in triage.LEVELS


def test_not_text_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="text"):
        triage.triage(b"bytes")  # type: ignore[arg-type]


def test_the_classifier_gives_its_opinion_on_every_message() -> None:
    result = triage.triage("I have had a mild cough for two days")
    assert result.second_opinion is not None and 0.0 <= result.second_opinion <= 1.0
    assert result.decided_by == "rules"


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("triage")(triage_command)
    app.command("triage-kb")(kb_check_command)
    return app


def test_cli_json_keeps_the_old_fields_and_adds_the_new(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["triage", "--json", "crushing chest pain and I'm sweating"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert {"red_flag", "category", "reasons", "level", "condition", "evidence"} <= set(payload)
    assert (
        payload["red_flag"] is True and payload["level"] == "emergency" and payload["category"] == "cardiac"
    )


def test_cli_stdin_streams_one_object_per_line(cli: typer.Typer) -> None:
    lines = "no chest pain\n\nI want to kill myself, I have the pills ready\n我不想活了，药都准备好了\n"
    result = CliRunner().invoke(cli, ["triage", "--json", "-"], input=lines)
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.output.splitlines()]
    assert [o["red_flag"] for o in objects] == [False, True, True]  # the blank line is skipped
    assert objects[1]["category"] == objects[2]["category"] == "suicide"


def test_cli_human_readable(cli: typer.Typer) -> None:
    flagged = CliRunner().invoke(cli, ["triage", "I want to kill myself, I have the pills ready"])
    assert flagged.exit_code == 0 and flagged.output.startswith("RED FLAG")
    assert "source:" in flagged.output
    calm = CliRunner().invoke(cli, ["triage", "no chest pain"])
    assert calm.exit_code == 0 and not calm.output.startswith("RED FLAG")


def test_cli_says_when_a_message_is_in_a_language_the_rules_do_not_read(cli: typer.Typer) -> None:
    text = "Mi madre tiene dolor de pecho y le cuesta respirar"
    shown = CliRunner().invoke(cli, ["triage", text])
    assert shown.exit_code == 0 and shown.output.startswith("NOT SCREENED"), shown.output
    assert "Spanish" in shown.output and "SELF CARE" not in shown.output
    payload = json.loads(CliRunner().invoke(cli, ["triage", "--json", text]).output)
    assert payload["unscreened_language"] == "es"
    english = json.loads(CliRunner().invoke(cli, ["triage", "--json", "a mild rash on my arm"]).output)
    assert english["unscreened_language"] is None


def test_cli_refuses_an_empty_message(cli: typer.Typer) -> None:
    for text in ("", "   "):
        result = CliRunner().invoke(cli, ["triage", text])
        assert result.exit_code == 2 and "TEXT is empty" in result.output, result.output


def test_cli_kb_check(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["triage-kb"])
    assert result.exit_code == 0, result.output
    assert "conditions" in result.output
