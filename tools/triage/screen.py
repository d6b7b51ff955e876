"""The rules pass: extraction (findings with their spans and context, numbers) and scoring (conditions
fire on their discriminators together; the highest level wins)."""

from __future__ import annotations

import re
from collections.abc import KeysView
from dataclasses import dataclass, field

from tools.triage import numbers
from tools.triage.context import Span, Status, chinese_status, english_status, sentence_bounds, sentence_of
from tools.triage.knowledge import LEVELS, AnyOf, Comparison, CompiledCondition, KnowledgeBase, Level, Line
from tools.triage.text import normalise

# Which assertions count, by the finding's kind; chronic symptoms count on routine / self-care lines only.
_COUNTS: dict[str, frozenset[str]] = {
    "symptom": frozenset({"affirmed", "uncertain"}),
    "course": frozenset({"affirmed", "uncertain"}),
    "risk": frozenset({"affirmed", "uncertain", "historical", "chronic"}),
    "explain": frozenset({"affirmed", "uncertain", "historical", "chronic"}),
    # What the writer asks for (a check, a referral): a question is itself "hypothetical" to NegEx and may
    # be about a family history, but the asking is real; only a negation sets it aside.
    "request": frozenset({"affirmed", "uncertain", "historical", "chronic", "hypothetical", "family"}),
}
_LOW_LEVELS = frozenset({"routine", "self_care"})
_LATIN = re.compile(r"[a-z]")
_CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Occurrence:
    finding: str
    kind: str
    start: int
    end: int
    text: str
    status: Status
    count: float | None = None
    duration_min: float | None = None


@dataclass
class Extraction:
    text: str
    occurrences: list[Occurrence]
    measures: dict[str, float]
    _by_finding: dict[str, list[Occurrence]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for occurrence in self.occurrences:
            self._by_finding.setdefault(occurrence.finding, []).append(occurrence)

    @property
    def found(self) -> KeysView[str]:
        """The findings shown at all (whatever their status)."""
        return self._by_finding.keys()

    def counted(self, finding: str, level: str) -> list[Occurrence]:
        found = []
        for occurrence in self._by_finding.get(finding, ()):
            allowed = _COUNTS[occurrence.kind]
            if occurrence.status in allowed or (occurrence.status == "chronic" and level in _LOW_LEVELS):
                found.append(occurrence)
        return found


def extract(kb: KnowledgeBase, raw: str) -> Extraction:
    text = normalise(raw, kb.lexicon)
    spans: list[tuple[str, str, int, int, str]] = []  # finding, kind, start, end, lang
    has_latin, has_cjk = bool(_LATIN.search(text)), bool(_CJK.search(text))
    # Only findings whose patterns' required words occur in the text are searched at all (same result,
    # a fraction of the searches: most findings are absent from any one message).
    en_possible = kb.gates["en"].candidates(text) if has_latin else set()
    zh_possible = kb.gates["zh"].candidates(text) if has_cjk else set()
    for finding_id, compiled in kb.findings.items():
        kind = compiled.finding.kind
        for lang, patterns, gate in (
            ("en", compiled.en, compiled.any_en if finding_id in en_possible else None),
            ("zh", compiled.zh, compiled.any_zh if finding_id in zh_possible else None),
        ):
            if gate is None or not gate.search(text):
                continue  # one search rules out every pattern of the finding
            taken: list[tuple[int, int]] = []
            for pattern in patterns:
                for match in pattern.finditer(text):
                    if match.end() == match.start():
                        continue
                    if any(a <= match.start() < b or match.start() <= a < match.end() for a, b in taken):
                        continue
                    taken.append((match.start(), match.end()))
                    spans.append((finding_id, kind, match.start(), match.end(), lang))
    bounds = sentence_bounds(text)
    en_spans = [s for s in spans if s[4] == "en"]
    zh_spans = [s for s in spans if s[4] == "zh"]
    statuses: dict[tuple[str, int, int, str], Status] = {}
    for group, assess in ((en_spans, english_status), (zh_spans, chinese_status)):
        found = assess(text, [Span(s[2], s[3]) for s in group], bounds)
        for span, status in zip(group, found, strict=True):
            statuses[(span[0], span[2], span[3], span[4])] = status
    occurrences = []
    durations: dict[tuple[int, int], list[float]] = {}  # by sentence: several findings share one
    for finding_id, kind, start, end, lang in sorted(spans, key=lambda s: (s[2], s[0])):
        a, b = sentence_of(bounds, start, len(text))
        sentence = text[a:b]
        if (a, b) not in durations:
            durations[(a, b)] = numbers.durations(sentence)
        spans_durations = durations[(a, b)]
        occurrences.append(
            Occurrence(
                finding=finding_id,
                kind=kind,
                start=start,
                end=end,
                text=text[start:end],
                status=statuses[(finding_id, start, end, lang)],
                count=numbers.counts_near(sentence, start - a, end - a),
                duration_min=max(spans_durations) if spans_durations else None,
            )
        )
    measures = numbers.measures(text)
    occurrences += _from_numbers(kb, measures, occurrences)
    return Extraction(text, occurrences, measures)


def _from_numbers(kb: KnowledgeBase, measures: dict[str, float], found: list[Occurrence]) -> list[Occurrence]:
    """Findings the knowledge base defines by a number (``stated_as``: a stated 39.2 is a fever however
    it is worded), where no words already showed them."""
    shown = {o.finding for o in found if o.status in ("affirmed", "uncertain")}
    durations = [o.duration_min for o in found if o.duration_min is not None]
    added = []
    for finding_id, compiled in kb.findings.items():
        rule = compiled.stated_as
        if rule is None or finding_id in shown or not rule.holds(observed := measures.get(rule.measure)):
            continue
        added.append(
            Occurrence(
                finding=finding_id,
                kind=compiled.finding.kind,
                start=0,
                end=0,
                text=f"{rule.measure} {observed:g}",
                status="affirmed",
                duration_min=max(durations) if durations else None,
            )
        )
    return added


# --- scoring -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    condition: CompiledCondition
    level: Level
    line: Line
    evidence: tuple[Occurrence, ...]
    explained_by: Line | None = None
    numbers: tuple[str, ...] = ()
    distinctiveness: float = 0.0

    @property
    def specificity(self) -> int:
        return len(self.line.terms)


def _line_holds(line: Line, extraction: Extraction, level: str) -> tuple[bool, list[Occurrence], list[str]]:
    evidence: list[Occurrence] = []
    quoted: list[str] = []
    for term in line.terms:
        if isinstance(term, AnyOf):
            hits = [o for finding in term.findings for o in extraction.counted(finding, level)]
            if not hits:
                return False, [], []
            evidence.append(hits[0])
            continue
        assert isinstance(term, Comparison)
        if term.finding is None:
            observed = extraction.measures.get(term.measure)
        else:
            occurrences = extraction.counted(term.finding, level)
            values = [getattr(o, "count" if term.measure == "count" else "duration_min") for o in occurrences]
            present = [v for v in values if v is not None]
            observed = max(present) if present else None
        if not term.holds(observed):
            return False, [], []
        quoted.append(f"{term.measure}{f'({term.finding})' if term.finding else ''}={observed:g}")
    return True, evidence, quoted


def _distinctiveness(line: Line, evidence: list[Occurrence], spread: dict[str, int] | None) -> float:
    """How much the matched terms say about *this* condition: each term counts 1 / the number of
    conditions whose lines name what it matched (the matched finding; a number's measure)."""
    if spread is None:
        return float(len(line.terms))
    total, found = 0.0, iter(evidence)
    for term in line.terms:
        key = next(found).finding if isinstance(term, AnyOf) else (term.finding or term.measure)
        total += 1.0 / max(1, spread.get(key, 1))
    return total


def score_condition(
    compiled: CompiledCondition, extraction: Extraction, spread: dict[str, int] | None = None
) -> Match | None:
    found = extraction.found
    for level in reversed(LEVELS):
        for line, needs in zip(compiled.lines[level], compiled.needs[level], strict=True):
            if any(need.isdisjoint(found) for need in needs):
                continue  # a term names no finding the message shows: the line cannot hold
            holds, evidence, quoted = _line_holds(line, extraction, level)
            if not holds:
                continue
            weight = _distinctiveness(line, evidence, spread)
            for explanation in compiled.explained_by:
                explained, _, _ = _line_holds(explanation, extraction, level)
                if explained:
                    lowered = LEVELS[max(0, LEVELS.index(level) - 1)]
                    return Match(compiled, lowered, line, tuple(evidence), explanation, tuple(quoted), weight)
            return Match(compiled, level, line, tuple(evidence), None, tuple(quoted), weight)
    return None


def score(kb: KnowledgeBase, extraction: Extraction) -> list[Match]:
    """Every condition that fires, most urgent first; among equals the match whose discriminators are the
    most distinctive (findings few conditions name), then the line with more terms, then KB order."""
    spread, found = kb.spread, extraction.found
    # A condition none of whose lines' findings the message shows cannot fire: skipped with one set test.
    possible = (c for c in kb.conditions if c.mentions is None or not c.mentions.isdisjoint(found))
    matches = [m for m in (score_condition(c, extraction, spread) for c in possible) if m is not None]
    order = {c.condition.id: i for i, c in enumerate(kb.conditions)}
    matches.sort(
        key=lambda m: (
            -LEVELS.index(m.level),
            -round(m.distinctiveness, 6),
            -m.specificity,
            order[m.condition.condition.id],
        )
    )
    return matches


def default_level(extraction: Extraction) -> Level:
    """Nothing fired: routine when the message reports a current symptom, else self-care."""
    current = any(
        o.kind == "symptom" and o.status in ("affirmed", "uncertain") for o in extraction.occurrences
    )
    return "routine" if current else "self_care"
