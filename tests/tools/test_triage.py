"""Red-flag triage: hand-picked critical cases, the assertion context, the evaluation floors, the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from serving.triage_cli import triage_command
from tests.tools import triage_eval
from tools import embeddings, triage

# Every one of these must raise the flag, with this category.
CRITICAL_EMERGENCIES = [
    ("I have crushing chest pain and I'm sweating", "cardiac"),
    ("chest pain and i cant breath", "cardiac"),
    ("我胸口剧痛，出了一身冷汗", "cardiac"),
    ("my husband collapsed and isn't breathing", "unresponsive"),
    ("I can't breathe and my lips are turning blue", "breathing"),
    ("his face is drooping and his speech is slurred", "stroke"),
    ("my mom suddenly can't lift her left arm", "stroke"),
    ("我妈突然说话不清，嘴角歪了", "stroke"),
    ("I want to kill myself", "suicide"),
    ("i dont want to live anymore", "suicide"),
    ("我不想活了", "suicide"),
    ("my throat is closing up after eating peanuts", "anaphylaxis"),
    ("I cut my arm and the bleeding won't stop", "bleeding"),
    ("I've been vomiting blood", "gi_bleed"),
    ("black tarry stools since yesterday", "gi_bleed"),
    ("my 6 week old baby has a fever of 38.5", "infant_fever"),
    ("宝宝两个月大，发烧38度5", "infant_fever"),
    ("my son has been seizing for 7 minutes", "seizure"),
    ("she had a seizure and then another one without waking up", "seizure"),
    ("worst headache of my life, came on suddenly", "thunderclap_headache"),
    ("fever and a stiff neck, and light hurts my eyes", "meningitis"),
    ("I'm 8 weeks pregnant and bleeding", "pregnancy"),
    ("I hit my head and passed out", "head_injury"),
    ("fever and chills, and now he's confused and his skin is mottled", "sepsis"),
    ("I took a whole bottle of tylenol", "overdose"),
    ("孩子喝了农药", "overdose"),
    ("chest pian and sweatting", "cardiac"),  # typos
]
# None of these may raise the flag.
CRITICAL_NON_EMERGENCIES = [
    "no chest pain",
    "I don't have trouble breathing",
    "my father had a stroke years ago",
    "last year I had a seizure",
    "denies suicidal thoughts",
    "I'm not suicidal",
    "no fever, no stiff neck",
    "我爸爸几年前中风过",
    "去年我抽搐过一次",
    "没有胸痛，也没有呼吸困难",
    "我不发烧",
    "否认自杀想法",
    "What are the warning signs of a stroke?",
    "If my child has a seizure, what should I do?",
    "My grandmother died of a heart attack in 2010",
    "I have a mild headache",
    "my 2 year old has a fever of 38.5",
    "I can't breathe through my nose because of a cold",
    "the bleeding has stopped now",
    "中风有哪些症状？",
]


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    return {split: triage_eval.evaluate(split) for split in ("dev", "test")}


@pytest.mark.parametrize(("text", "category"), CRITICAL_EMERGENCIES)
def test_critical_emergencies_fire(text: str, category: str) -> None:
    result = triage.triage(text)
    assert result.red_flag, (text, result.reasons)
    assert result.category == category, (text, result)
    assert result.reasons


@pytest.mark.parametrize("text", CRITICAL_NON_EMERGENCIES)
def test_critical_non_emergencies_do_not_fire(text: str) -> None:
    result = triage.triage(text)
    assert not result.red_flag, (text, result.reasons)
    assert result.category is None


@pytest.mark.parametrize(
    ("text", "concept", "status"),
    [
        ("no chest pain", "chest_pain", "negated"),
        ("he denies chest pain or shortness of breath", "dyspnea", "negated"),
        ("the chest pain has gone", "chest_pain", "negated"),
        ("没有呼吸困难", "dyspnea", "negated"),
        ("last year I had a seizure", "seizure", "past or family history"),
        ("我奶奶十年前抽搐过", "seizure", "past or family history"),
        ("if I get chest pain should I worry", "chest_pain", "hypothetical or general question"),
        ("I sometimes get chest pain", "chest_pain", "habitual"),
        ("I can't breathe", "severe_dyspnea", "affirmed"),  # a negation inside the finding itself
        ("叫不醒", "unresponsive", "affirmed"),
        ("i had a stroke years ago, and now my face is drooping", "face_droop", "affirmed"),  # "now" resets
    ],
)
def test_assertion_context(text: str, concept: str, status: str) -> None:
    found = [f for f in triage.find_concepts(text) if f.concept == concept]
    assert found and found[0].status == status, triage.find_concepts(text)


def test_scope_ends_at_but() -> None:
    result = triage.triage("No fever, but I have crushing chest pain")
    assert result.red_flag and result.category == "cardiac"


def test_other_person_now_fires_but_their_history_does_not() -> None:
    assert triage.triage("my dad is slurring his words right now").red_flag
    assert not triage.triage("my dad had slurred speech after his stroke in 2015").red_flag


def test_reasons_say_what_fired_and_where() -> None:
    result = triage.triage("I have crushing chest pain and I'm sweating")
    assert any("rule" in r and "crushing chest pain" in r for r in result.reasons)
    quiet = triage.triage("no chest pain")
    assert quiet.reasons == ['not counted: "chest pain" (negated: "no") in "no chest pain"']


def test_similarity_catches_paraphrases_the_rules_miss() -> None:
    text = "each breath is a struggle and I can't finish a sentence"
    assert not triage.decide(triage.analyse(text), triage_eval.RULES_ONLY).red_flag
    result = triage.triage(text)
    assert result.red_flag and "similarity" in result.reasons[0]


def test_deterministic() -> None:
    texts = [text for text, _ in CRITICAL_EMERGENCIES[:8]] + CRITICAL_NON_EMERGENCIES[:8]
    first = [triage.triage(t) for t in texts]
    assert [triage.triage(t) for t in texts] == first
    assert triage.triage_many(texts) == first


def test_rules_still_work_without_the_embedding_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_: object, **__: object) -> None:
        raise embeddings.EmbeddingModelMissing("not installed")

    monkeypatch.setattr(embeddings, "embed", missing)
    monkeypatch.setattr(triage, "_english_exemplars", missing)
    assert triage.triage("I want to kill myself").category == "suicide"
    quiet = triage.triage("my knee hurts after running")
    assert not quiet.red_flag and "unavailable" in quiet.reasons[-1]


def test_evaluation_floors(reports: dict[str, dict[str, Any]]) -> None:
    """Dev was written with the rules; test (round 6) was never tuned on: its figures are the honest ones."""
    for split, report in reports.items():
        print(
            f"\ntriage {split}: n={report['n']} recall={report['recall']} "
            f"false-alarm={report['false_alarm_rate']} rules-only={report['rules_only']}"
        )
    dev, test = reports["dev"], reports["test"]
    assert dev["n"] >= 500 and test["n"] >= 120
    assert dev["recall"] >= 0.98 and dev["false_alarm_rate"] <= 0.03
    assert test["recall"] >= 0.93 and test["false_alarm_rate"] <= 0.07
    for lang in ("en", "zh"):
        assert test[lang]["recall"] >= 0.90, lang


def test_evaluation_set_covers_every_category() -> None:
    examples = triage_eval.load()
    for split in ("dev", "test"):
        covered = {e.category for e in examples if e.split == split and e.emergency}
        assert covered == set(triage.CATEGORIES), set(triage.CATEGORIES) - covered
        assert {e.lang for e in examples if e.split == split} == {"en", "zh"}


def test_thresholds_are_the_ones_the_dev_sweep_picks() -> None:
    picked = triage_eval.sweep("dev")
    setting = triage.Thresholds()
    assert (picked["embedding"]["picked"]["threshold"], picked["embedding"]["picked"]["margin"]) == (
        setting.embedding,
        setting.embedding_margin,
    )
    assert (picked["ngram"]["picked"]["threshold"], picked["ngram"]["picked"]["margin"]) == (
        setting.ngram,
        setting.ngram_margin,
    )


# --- CLI ----------------------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("triage")(triage_command)
    return app


def test_cli_json(cli: typer.Typer) -> None:
    result = CliRunner().invoke(cli, ["--json", "I have crushing chest pain and I'm sweating"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload) == {"red_flag", "category", "reasons"}
    assert payload["red_flag"] is True and payload["category"] == "cardiac"


def test_cli_stdin_streams_one_object_per_line(cli: typer.Typer) -> None:
    lines = "no chest pain\n\nI want to kill myself\n我不想活了\n"
    result = CliRunner().invoke(cli, ["--json", "-"], input=lines)
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.output.splitlines()]
    assert [o["red_flag"] for o in objects] == [False, True, True]  # the blank line is skipped
    assert objects[2]["category"] == "suicide"


def test_cli_human_readable(cli: typer.Typer) -> None:
    flagged = CliRunner().invoke(cli, ["I want to kill myself"])
    assert flagged.exit_code == 0 and flagged.output.startswith("RED FLAG")
    calm = CliRunner().invoke(cli, ["no chest pain"])
    assert calm.exit_code == 0 and calm.output.startswith("no red flag")
