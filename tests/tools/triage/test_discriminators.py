"""Mechanism changes that stay data-driven: which condition names an emergency when several fire, the
second opinion keeping the rules' category, obstetric and fractional numbers, and a fresh time anchor
ending a long-standing cue's reach."""

from __future__ import annotations

import pytest

from tools import triage
from tools.triage import classifier
from tools.triage.context import Span, chinese_status
from tools.triage.knowledge import knowledge_base
from tools.triage.levels import CATEGORIES, EMERGENCY_CATEGORIES
from tools.triage.numbers import durations, measures
from tools.triage.text import normalise


def test_emergency_categories_are_the_first_block() -> None:
    assert "vascular" in EMERGENCY_CATEGORIES and "infection" not in EMERGENCY_CATEGORIES
    assert EMERGENCY_CATEGORIES <= set(CATEGORIES)


def test_spread_counts_conditions_naming_a_finding() -> None:
    spread = knowledge_base().spread
    # a finding many conditions name tells less about which one it is than a specific sign
    assert spread["confusion"] > spread["bulging_fontanelle"] >= 1


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("my 9 month old has a fever and the soft spot on her head is bulging", "meningitis"),
        (
            "he's had a known aortic aneurysm for years and now sudden severe belly pain, he's gone pale",
            "vascular",
        ),
    ],
)
def test_the_most_distinctive_discriminators_name_the_emergency(text: str, category: str) -> None:
    result = triage.triage_rules(text)
    assert result.level == "emergency" and result.category == category


def test_a_raised_urgent_condition_keeps_its_category() -> None:
    urgent = triage.TriageResult(red_flag=False, level="urgent", category="genitourinary")
    text = "I'm going to kill myself tonight, I have the pills here"
    found = classifier.opinion(text)
    assert found is not None
    reviewed = classifier.review(text, urgent)
    if reviewed.red_flag:
        assert reviewed.category == "genitourinary" and reviewed.decided_by == "classifier"
    same_day_only = triage.TriageResult(red_flag=False, level="urgent", category="infection")
    reviewed = classifier.review(text, same_day_only)
    if reviewed.red_flag:
        assert reviewed.category == found[1]


@pytest.mark.parametrize(
    ("text", "weeks"),
    [("37+2 with my second, bump feels hard", 37), ("I'm 29+5 and worried", 29), ("孕36+5，肚子一直硬", 36)],
)
def test_obstetric_weeks_plus_days(text: str, weeks: int) -> None:
    found = measures(normalise(text))
    assert found.get("pregnancy_weeks") == weeks
    assert found.get("age_years") in (None, 0) or found["age_years"] != weeks


def test_and_a_half_durations() -> None:
    assert max(durations("it has lasted 4 and a half hours now")) == pytest.approx(270)


def test_chinese_age_just_reached() -> None:
    assert measures("宝宝刚满两个月，体温38.1度")["age_months"] == pytest.approx(2)


def test_a_fresh_time_anchor_ends_a_long_standing_cue() -> None:
    text = "腰疼好多年了，这两天两条腿都发麻"
    start = text.index("两条腿")
    back = text.index("腰疼")
    statuses = chinese_status(text, [Span(back, back + 2), Span(start, start + 6)])
    assert statuses == ["chronic", "affirmed"]
