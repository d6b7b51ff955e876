"""Red-flag triage: how urgent is what a message describes, and why?

A **knowledge base organised by condition** (``kb/``: data a clinician reviews, every condition with its
sources) is read by a small mechanism:

1. :mod:`~tools.triage.text` normalises the text; :mod:`~tools.triage.knowledge` compiles the findings'
   English and Chinese patterns; :mod:`~tools.triage.screen` finds every finding with its span.
2. :mod:`~tools.triage.context` gives each occurrence an assertion status — negated, historical,
   hypothetical, family, chronic (English through negspacy's NegEx mechanism; Chinese by our rules).
3. :mod:`~tools.triage.numbers` parses ages, temperatures (°C/°F), pregnancy weeks, oxygen, blood sugar,
   blood pressure, pulse, counts and durations.
4. Conditions fire on their discriminators *together* (risk factor + pattern + time course + numbers);
   a benign explanation given in the message lowers a condition only where the knowledge base says so.
   The most urgent level wins: ``emergency`` / ``urgent`` / ``routine`` / ``self_care``.
5. :mod:`~tools.triage.classifier`, a calibrated logistic regression on sentence embeddings (English) and
   character n-grams (Chinese) trained on a set written from the knowledge base, gives a second opinion
   that can raise a message the rules left below emergency (see its module for when).

Deterministic: the same text gives the same answer. ``red_flag`` is ``level == "emergency"``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tools.triage.knowledge import KnowledgeError, knowledge_base
from tools.triage.levels import ADVICE, CATEGORIES, CATEGORIES_ZH, LEVELS, Level
from tools.triage.screen import Extraction, Match, default_level, extract, score

__all__ = [
    "ADVICE",
    "CATEGORIES",
    "CATEGORIES_ZH",
    "LEVELS",
    "Evidence",
    "KnowledgeError",
    "Level",
    "TriageResult",
    "analyse",
    "triage",
    "triage_rules",
]


class Evidence(BaseModel):
    model_config = ConfigDict(frozen=True)

    finding: str
    text: str = Field(description="The words of the (normalised) message that show the finding.")
    start: int
    end: int
    status: str = Field(description="affirmed, uncertain, negated, historical, hypothetical, family, chronic")


class TriageResult(BaseModel):
    """The screen's verdict. ``red_flag`` and ``category`` keep their meaning from the first screen."""

    model_config = ConfigDict(frozen=True)

    red_flag: bool
    category: str | None = Field(None, description="A key of CATEGORIES when a condition fired.")
    reasons: list[str] = Field(
        default_factory=list, description="What fired, on which text; or what was set aside."
    )
    level: Level = "self_care"
    condition: str | None = Field(None, description="The knowledge base's id of the condition that decided.")
    condition_name: str | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list, description="The references the condition cites.")
    decided_by: str = Field("rules", description="rules | classifier (the second opinion raised the level)")
    second_opinion: float | None = Field(
        None, description="The classifier's probability of an emergency, when it ran."
    )


def _evidence(match: Match) -> list[Evidence]:
    return [
        Evidence(finding=o.finding, text=o.text, start=o.start, end=o.end, status=o.status)
        for o in match.evidence
    ]


def _set_aside(extraction: Extraction) -> list[str]:
    kb = knowledge_base()
    notes = []
    for occurrence in extraction.occurrences:
        if occurrence.status in ("negated", "historical", "hypothetical", "family") and occurrence.kind in (
            "symptom",
            "course",
        ):
            label = kb.findings[occurrence.finding].finding.label.en
            notes.append(f'set aside ({occurrence.status}): {label} "{occurrence.text}"')
    return notes[:8]


def analyse(text: str) -> tuple[Extraction, list[Match]]:
    """The rules' whole view of a message: what was found, and every condition that fired."""
    kb = knowledge_base()
    extraction = extract(kb, text)
    return extraction, score(kb, extraction)


def triage_rules(text: str) -> TriageResult:
    """The knowledge base's rules alone (used on the model's own answers, which speak in general)."""
    if not isinstance(text, str):
        raise TypeError("triage takes text")
    return _from_rules(*analyse(text))


def _from_rules(extraction: Extraction, matches: list[Match]) -> TriageResult:
    if not matches:
        return TriageResult(red_flag=False, level=default_level(extraction), reasons=_set_aside(extraction))
    best = matches[0]
    condition = best.condition.condition
    reason = f"{condition.name.en} [{best.level}]: {best.line.text}"
    quoted = [f'"{o.text}"' for o in best.evidence] + list(best.numbers)
    if quoted:
        reason += " — " + ", ".join(quoted)
    reasons = [reason]
    if best.explained_by is not None:
        reasons.append(f"lowered one level: the message gives an explanation ({best.explained_by.text})")
    reasons += [f"also: {m.condition.condition.name.en} [{m.level}]" for m in matches[1:3]]
    return TriageResult(
        red_flag=best.level == "emergency",
        category=condition.category,
        reasons=reasons,
        level=best.level,
        condition=condition.id,
        condition_name=condition.name.en,
        evidence=_evidence(best),
        sources=list(condition.sources),
    )


def triage(text: str) -> TriageResult:
    """Rules first; the learned second opinion may raise a message the rules left below emergency."""
    from tools.triage import classifier

    if not isinstance(text, str):
        raise TypeError("triage takes text")
    extraction, matches = analyse(text)
    nearest = [m.condition.condition.category for m in matches]
    return classifier.review(text, _from_rules(extraction, matches), nearest)
