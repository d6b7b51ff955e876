"""The mechanism on a small knowledge base: combinations, levels, numbers, explanations, context."""

from __future__ import annotations

import pytest

from tools.triage.knowledge import KnowledgeBase
from tools.triage.screen import default_level, extract, score


def _decide(kb: KnowledgeBase, text: str) -> tuple[str | None, str]:
    extraction = extract(kb, text)
    matches = score(kb, extraction)
    if not matches:
        return None, default_level(extraction)
    return matches[0].condition.condition.id, matches[0].level


@pytest.mark.parametrize(
    ("text", "condition", "level"),
    [
        ("I have chest pain and I'm sweating a lot", "heart_attack_test", "emergency"),
        ("my chest feels tight", "heart_attack_test", "urgent"),  # one discriminator alone
        ("I'm 55 and diabetic, my chest feels tight", "heart_attack_test", "emergency"),  # risk + age
        ("I'm 25 and diabetic, my chest feels tight", "heart_attack_test", "urgent"),  # below the age
        ("I am 60, diabetes diagnosed years ago, and now chest tightness", "heart_attack_test", "emergency"),
        ("chest pain and sweating since the gym", "heart_attack_test", "urgent"),  # explained: one lower
        ("胸口很闷，出了一身冷汗", "heart_attack_test", "emergency"),
        ("he has had 4 seizures today", "seizure_test", "emergency"),
        ("a seizure that lasted 7 minutes", "seizure_test", "emergency"),
        ("one short seizure, he is fine now", "seizure_test", "urgent"),
        ("孩子抽了3次", "seizure_test", "emergency"),
        ("my 6 week old has a temperature of 38.3", "infant_fever_test", "emergency"),
        ("my 6 month old has a temperature of 38.3", "infant_fever_test", "routine"),
        ("宝宝2个月大，发烧38.5度", "infant_fever_test", "emergency"),
    ],
)
def test_levels(small_kb: KnowledgeBase, text: str, condition: str, level: str) -> None:
    assert _decide(small_kb, text) == (condition, level)


@pytest.mark.parametrize(
    "text",
    [
        "no chest pain and no sweating",
        "if I get chest pain and sweating, what should I do?",
        "family history of chest pain with sweating",
        "我没有胸痛，也没出汗",
        "I had chest pain and sweating 3 years ago",
    ],
)
def test_negated_hypothetical_family_and_past_symptoms_do_not_count(
    small_kb: KnowledgeBase, text: str
) -> None:
    condition, level = _decide(small_kb, text)
    assert level != "emergency", (text, condition, level)


def test_nothing_matched_is_routine_with_a_symptom_else_self_care(small_kb: KnowledgeBase) -> None:
    assert _decide(small_kb, "I have a fever")[1] == "routine"  # matched by the condition's routine line
    assert _decide(small_kb, "how do I renew my prescription?") == (None, "self_care")


def test_evidence_points_into_the_normalised_text(small_kb: KnowledgeBase) -> None:
    extraction = extract(small_kb, "Crushing CHEST pain and I am sweating")
    match = score(small_kb, extraction)[0]
    for occurrence in match.evidence:
        assert extraction.text[occurrence.start : occurrence.end] == occurrence.text
    assert {o.finding for o in match.evidence} == {"chest_pain", "sweating"}


def test_deterministic(small_kb: KnowledgeBase) -> None:
    text = "my chest feels tight, 4 seizures today, temperature 38.5"
    first = [(m.condition.condition.id, m.level) for m in score(small_kb, extract(small_kb, text))]
    for _ in range(3):
        assert [
            (m.condition.condition.id, m.level) for m in score(small_kb, extract(small_kb, text))
        ] == first


def test_a_stated_temperature_of_38_or_more_is_a_fever(small_kb: KnowledgeBase) -> None:
    assert "fever" in {o.finding for o in extract(small_kb, "she is 39.2 this morning").occurrences}
    assert "fever" not in {o.finding for o in extract(small_kb, "she is 37.2 this morning, fine").occurrences}
