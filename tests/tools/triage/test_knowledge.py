"""The knowledge base: the pattern syntax, validation errors that name the entry, and the clinical KB."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tools.triage.knowledge import (
    KnowledgeError,
    case_failures,
    compile_pattern,
    example_failures,
    knowledge_base,
    load_kb,
    parse_line,
)
from tools.triage.levels import CATEGORIES, CATEGORIES_ZH

ROOT = Path(__file__).resolve().parents[3]
# Categories that only same-day care uses; the others must each have an emergency condition.
SAME_DAY_ONLY = {"infection", "mental_health", "musculoskeletal", "skin", "ent", "urinary", "other"}


@pytest.mark.parametrize(
    ("pattern", "lang", "matches", "misses"),
    [
        (
            "chest ~2 pain",
            "en",
            ["chest pain", "chest really bad pain"],
            ["chest is a big pain", "chestpain"],
        ),
        ("(pain|ache) in ~1 chest", "en", ["pain in my chest", "ache in chest"], ["pain in the left chest"]),
        (
            "(long[- ]haul|bed ?bound)",
            "en",
            ["long-haul", "long haul", "bedbound", "bed bound"],
            ["longhaul"],
        ),
        ("(can't keep ~2 down)", "en", ["can't keep anything down", "can't keep it all down"], []),
        ("seiz\\w*", "en", ["seizures"], ["preseizure"]),
        ("胸 ~2 (痛|疼)", "zh", ["胸痛", "胸口很痛"], ["胸口，很痛", "胸部一直都很痛"]),
        ("(喘不 ~1 气)", "zh", ["喘不上气", "喘不气"], []),
    ],
)
def test_pattern_syntax(pattern: str, lang: str, matches: list[str], misses: list[str]) -> None:
    compiled = compile_pattern(pattern, lang)
    for text in matches:
        assert compiled.search(text), (pattern, text)
    for text in misses:
        assert not compiled.search(text), (pattern, text)


def test_line_grammar() -> None:
    line = parse_line("chest_pain + (sweating | nausea) + age_years >= 40 + duration(seizure) >= 5min")
    assert line.findings == ("chest_pain", "sweating", "nausea", "seizure")
    assert line.terms[3].value == 5 and parse_line("duration(fever) >= 2d").terms[0].value == 2880
    for bad in ("chest_pain + bmi > 30", "duration(fever) >= 5", "Chest Pain", "temp_c(fever) > 38"):
        with pytest.raises(KnowledgeError):
            parse_line(bad)


def _write(root: Path, findings: str, conditions: str) -> Path:
    (root / "findings").mkdir(parents=True, exist_ok=True)
    (root / "conditions").mkdir(parents=True, exist_ok=True)
    (root / "findings" / "a.yaml").write_text(findings, "utf-8")
    (root / "conditions" / "a.yaml").write_text(conditions, "utf-8")
    return root


FINDING = "pain:\n  kind: symptom\n  label: {en: pain, zh: 痛}\n  en: [pain]\n"
CONDITION = "- id: c\n  name: {en: c, zh: c}\n  category: %s\n  sources: [x]\n  urgent: [%s]\n"


@pytest.mark.parametrize(
    ("findings", "conditions", "message"),
    [
        (FINDING, CONDITION % ("cardiac", "pain + fever"), "names no finding 'fever'"),
        (FINDING, CONDITION % ("cardiology", "pain"), "unknown category 'cardiology'"),
        (FINDING + "  zh: ['(痛']\n", CONDITION % ("cardiac", "pain"), "unbalanced brackets"),
        (
            FINDING,
            "- id: c\n  name: {en: c, zh: c}\n  category: cardiac\n  sources: []\n  urgent: [pain]\n",
            "sources",
        ),
        (
            FINDING,
            "- id: pain\n  name: {en: c, zh: c}\n  category: cardiac\n  sources: [x]\n  urgent: [pain]\n",
            "more than once",
        ),
    ],
)
def test_errors_name_the_file_and_the_entry(
    tmp_path: Path, findings: str, conditions: str, message: str
) -> None:
    with pytest.raises(KnowledgeError, match=message) as error:
        load_kb(_write(tmp_path, findings, conditions))
    assert "a.yaml" in str(error.value)


# --- the clinical knowledge base ----------------------------------------------------------------------


def test_the_clinical_knowledge_base_is_broad_and_sourced() -> None:
    kb = knowledge_base()
    emergency = [c for c in kb.conditions if c.lines["emergency"]]
    assert len(emergency) >= 80
    for compiled in kb.conditions:
        assert all(s.strip() for s in compiled.condition.sources), compiled.condition.id
    covered = {c.condition.category for c in emergency}
    assert set(CATEGORIES) - SAME_DAY_ONLY <= covered
    assert set(CATEGORIES_ZH) == set(CATEGORIES)
    for compiled in kb.findings.values():
        assert compiled.en and compiled.zh, f"{compiled.finding.id} needs English and Chinese patterns"


def test_every_finding_example_matches_its_patterns() -> None:
    assert example_failures(knowledge_base()) == []


def test_every_condition_test_case_passes() -> None:
    total, failures = case_failures(knowledge_base())
    assert total >= 400
    assert failures == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_frozen_evaluation_sets_are_unchanged(version: str) -> None:
    data = (ROOT / "bench" / "data" / f"triage-frozen-{version}.jsonl").read_bytes()
    recorded = (ROOT / "bench" / "data" / f"triage-frozen-{version}.jsonl.sha256").read_text().split()[0]
    assert hashlib.sha256(data).hexdigest() == recorded


def test_a_gap_never_steps_over_a_negation() -> None:
    assert compile_pattern("eye ~2 red", "en").search("my eye is red")
    assert not compile_pattern("eye ~2 red", "en").search("my eye is not red")
    assert compile_pattern("脖子 ~2 硬", "zh").search("脖子很硬")
    assert not compile_pattern("脖子 ~2 硬", "zh").search("脖子不硬")
