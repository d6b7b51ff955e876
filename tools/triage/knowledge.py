"""The triage knowledge base: loads ``kb/findings/*.yaml`` and ``kb/conditions/*.yaml`` (data a clinician
reviews, see ``kb/README.md``), validates it and compiles its patterns.

    python -m tools.triage.knowledge check   # load, compile, check references and finding examples
    python -m tools.triage.knowledge tests   # run every condition's test cases through the whole screen
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.triage.literals import required_literals

if TYPE_CHECKING:
    from tools.triage.text import Lexicon

KB_DIR = Path(__file__).with_name("kb")

Level = Literal["emergency", "urgent", "routine", "self_care"]
# Ascending: a higher index is more urgent.
LEVELS: tuple[Level, ...] = ("self_care", "routine", "urgent", "emergency")
Kind = Literal["symptom", "course", "risk", "explain", "request"]

# Numbers the extraction pass reads from a message (tools/triage/numbers.py), by the name lines use.
MEASURES = frozenset(
    {"temp_c", "age_months", "age_years", "pregnancy_weeks", "spo2", "glucose_mmol", "sbp", "dbp",
     "heart_rate", "resp_rate"}
)  # fmt: skip
PER_FINDING_MEASURES = frozenset({"count", "duration"})
_UNIT_MINUTES = {"min": 1.0, "h": 60.0, "d": 1440.0, "w": 10080.0}


class KnowledgeError(ValueError):
    """The knowledge base does not load: the message names the file and the entry."""


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: str
    zh: str


class Examples(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: list[str] = Field(default_factory=list)
    zh: list[str] = Field(default_factory=list)


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    kind: Kind
    label: Label
    en: list[str] = Field(default_factory=list)
    zh: list[str] = Field(default_factory=list)
    examples: Examples = Field(default_factory=Examples)
    stated_as: str | None = Field(
        None, description='A number that counts as this finding however it is worded: "temp_c >= 38".'
    )
    source_file: str = ""


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    level: Level


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: Label
    category: str
    sources: list[str] = Field(min_length=1)
    emergency: list[str] = Field(default_factory=list)
    urgent: list[str] = Field(default_factory=list)
    routine: list[str] = Field(default_factory=list)
    self_care: list[str] = Field(default_factory=list)
    explained_by: list[str] = Field(default_factory=list)
    advice: Label | None = None
    tests: list[Case] = Field(default_factory=list)
    source_file: str = ""

    @field_validator("sources")
    @classmethod
    def _sources_not_blank(cls, value: list[str]) -> list[str]:
        if any(not s.strip() for s in value):
            raise ValueError("a source is blank")
        return value


# --- lines: "chest_pain + (sweating | nausea) + age_years >= 40 + duration(seizure) >= 5min" ----------------


@dataclass(frozen=True)
class Comparison:
    measure: str  # a MEASURES name, or "count"/"duration" with ``finding`` set
    op: str
    value: float  # durations in minutes
    finding: str | None = None

    def holds(self, observed: float | None) -> bool:
        if observed is None:
            return False
        return {
            "<": observed < self.value,
            "<=": observed <= self.value,
            ">": observed > self.value,
            ">=": observed >= self.value,
            "==": observed == self.value,
        }[self.op]


@dataclass(frozen=True)
class AnyOf:
    findings: tuple[str, ...]


Term = Comparison | AnyOf


@dataclass(frozen=True)
class Line:
    text: str
    terms: tuple[Term, ...]

    @property
    def findings(self) -> tuple[str, ...]:
        ids: list[str] = []
        for term in self.terms:
            if isinstance(term, AnyOf):
                ids.extend(term.findings)
            elif term.finding:
                ids.append(term.finding)
        return tuple(ids)


_COMPARISON = re.compile(
    r"^(?P<measure>[a-z_][a-z0-9_]*)(?:\((?P<finding>[a-z0-9_]+)\))?\s*(?P<op><=|>=|<|>|==)\s*"
    r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>min|h|d|w)?$"
)
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_line(text: str) -> Line:
    terms: list[Term] = []
    for raw in text.split(" + "):
        term = raw.strip()
        match = _COMPARISON.match(term)
        if match:
            measure, finding, unit = match["measure"], match["finding"], match["unit"]
            value = float(match["value"])
            if finding is None and measure not in MEASURES:
                raise KnowledgeError(f"unknown measure {measure!r} in {text!r}")
            if finding is not None and measure not in PER_FINDING_MEASURES:
                raise KnowledgeError(f"{measure}(…) is not a per-finding measure in {text!r}")
            if measure == "duration":
                if unit is None:
                    raise KnowledgeError(f"a duration needs a unit (min, h, d, w) in {text!r}")
                value *= _UNIT_MINUTES[unit]
            elif unit is not None:
                raise KnowledgeError(f"only durations take a unit, in {text!r}")
            terms.append(Comparison(measure, match["op"], value, finding))
            continue
        if term.startswith("(") and term.endswith(")"):
            ids = tuple(part.strip() for part in term[1:-1].split("|"))
        else:
            ids = (term,)
        for finding_id in ids:
            if not _ID.match(finding_id):
                raise KnowledgeError(f"{finding_id!r} is not a finding id or a comparison, in {text!r}")
        terms.append(AnyOf(ids))
    if not terms:
        raise KnowledgeError("an empty line")
    return Line(text, tuple(terms))


# --- patterns -------------------------------------------------------------------------------------------


def _tokens(pattern: str) -> list[str]:
    """Split at spaces outside brackets."""
    tokens, depth, current, in_class = [], 0, [], False
    for char in pattern.strip():
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "(" and not in_class:
            depth += 1
        elif char == ")" and not in_class:
            depth -= 1
        if char == " " and depth == 0 and not in_class:
            if current:
                tokens.append("".join(current))
            current = []
            continue
        current.append(char)
    if current:
        tokens.append("".join(current))
    if depth != 0:
        raise KnowledgeError(f"unbalanced brackets in pattern {pattern!r}")
    return tokens


_GAP = re.compile(r"^~(\d+)$")
# A gap never steps over a negation: "my eye is not red" is no red eye, "脖子不硬" no stiff neck.
_EN_NEGATION = (
    r"no|not|never|without|none|nothing|isn't|aren't|wasn't|weren't|doesn't|don't|didn't|hasn't|haven't"
    r"|hadn't|won't|can't|cannot|couldn't|shouldn't|wouldn't|neither|nor"
)


def _en_gap(n: int | str) -> str:
    return rf"(?:\s+(?!(?:{_EN_NEGATION})(?![\w'’-]))[\w'’-]+){{0,{n}}}[\s-]+"


def _zh_gap(n: int | str) -> str:
    return f"[^不没无未{_ZH_STOP}]{{0,{n}}}"


_ZH_STOP = r"，。！？；、,.!?;\n"


_INNER_GAP = re.compile(r"\s*~(\d+)\s*")


def _body(token: str, lang: str) -> str:
    """One token's regular expression; a ``~N`` gap may also sit inside brackets."""
    if lang == "en":
        token = token.replace(" ?", "\x00")  # "head ?ache": an optional space
        token = _INNER_GAP.sub(lambda m: f"\x01{m.group(1)}\x02", token)
        token = _spaces_outside_classes(token, r"[\s-]+").replace("\x00", r"\s?")
        return re.sub("\x01(\\d+)\x02", lambda m: _en_gap(m.group(1)), token)
    token = _INNER_GAP.sub(lambda m: _zh_gap(m.group(1)), token)
    return _spaces_outside_classes(token, "")


def _spaces_outside_classes(token: str, replacement: str) -> str:
    """Replace spaces, except inside a character class such as ``[- ]``."""
    out, in_class, escaped = [], False, False
    for char in token:
        if escaped:
            out.append(char)
            escaped = False
            continue
        if char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        out.append(replacement if char == " " and not in_class else char)
    return "".join(out)


def compile_pattern(pattern: str, lang: str) -> re.Pattern[str]:
    """The README's syntax to a regular expression (English: whole words; Chinese: characters)."""
    parts: list[str] = []
    pending_gap = 0
    for token in _tokens(pattern):
        gap = _GAP.match(token)
        if gap:
            pending_gap = int(gap.group(1))
            continue
        body = _body(token, lang)
        if parts:
            if lang == "en":
                parts.append(_en_gap(pending_gap) if pending_gap else r"[\s-]+")
            elif pending_gap:
                parts.append(_zh_gap(pending_gap))
        parts.append(f"(?:{body})")
        pending_gap = 0
    if not parts:
        raise KnowledgeError(f"an empty pattern {pattern!r}")
    body = "".join(parts)
    try:
        return re.compile(rf"(?<![\w'])(?:{body})(?!\w)(?!'(?!s\b)\w)" if lang == "en" else body)
    except re.error as exc:
        raise KnowledgeError(f"pattern {pattern!r} ({lang}) does not compile: {exc}") from exc


@dataclass(frozen=True)
class CompiledFinding:
    finding: Finding
    en: tuple[re.Pattern[str], ...]
    zh: tuple[re.Pattern[str], ...]
    stated_as: Comparison | None = None

    @cached_property
    def any_en(self) -> re.Pattern[str] | None:
        """All English patterns in one: a single search tells whether any of them can match."""
        return re.compile("|".join(f"(?:{p.pattern})" for p in self.en)) if self.en else None

    @cached_property
    def any_zh(self) -> re.Pattern[str] | None:
        return re.compile("|".join(f"(?:{p.pattern})" for p in self.zh)) if self.zh else None


@dataclass(frozen=True)
class CompiledCondition:
    condition: Condition
    lines: dict[str, tuple[Line, ...]]  # by level
    explained_by: tuple[Line, ...]

    @cached_property
    def needs(self) -> dict[str, tuple[tuple[frozenset[str], ...], ...]]:
        """Per level and line (in ``lines`` order), the findings each of its terms needs: a term of
        findings holds only if one of them was found, a number about a finding only if it was found.
        A line with a term whose set misses the message's findings cannot hold (a cheap set test)."""
        return {level: tuple(_line_needs(line) for line in lines) for level, lines in self.lines.items()}

    @cached_property
    def mentions(self) -> frozenset[str] | None:
        """Every finding some line of the condition needs; None if a line needs none (numbers alone),
        since the condition may then fire whatever was found. A message showing none of these findings
        cannot fire the condition."""
        needed: set[str] = set()
        for per_line in self.needs.values():
            for needs in per_line:
                if not needs:
                    return None
                for need in needs:
                    needed.update(need)
        return frozenset(needed)


def _line_needs(line: Line) -> tuple[frozenset[str], ...]:
    needs: list[frozenset[str]] = []
    for term in line.terms:
        if isinstance(term, AnyOf):
            needs.append(frozenset(term.findings))
        elif term.finding is not None:
            needs.append(frozenset({term.finding}))
    return tuple(needs)


@dataclass(frozen=True)
class GateIndex:
    """Which findings' patterns (in one language) can match a text at all, read from the literal strings
    every match of them contains (tools.triage.literals): one substring test per distinct literal
    replaces a regular-expression search per finding. Findings whose patterns need no literal that
    could be read are always searched."""

    literals: tuple[str, ...]
    by_literal: dict[str, tuple[str, ...]]
    always: frozenset[str]

    @classmethod
    def build(cls, gates: dict[str, re.Pattern[str]]) -> GateIndex:
        by_literal: dict[str, list[str]] = {}
        always: set[str] = set()
        for finding_id, gate in gates.items():
            requirement = required_literals(gate)
            if requirement is None:
                always.add(finding_id)
                continue
            for literal in requirement:
                by_literal.setdefault(literal, []).append(finding_id)
        frozen = {literal: tuple(ids) for literal, ids in by_literal.items()}
        return cls(tuple(sorted(frozen)), frozen, frozenset(always))

    def candidates(self, text: str) -> set[str]:
        """The findings whose patterns may match ``text`` (every one that does is among them)."""
        found = set(self.always)
        for literal in self.literals:
            if literal in text:
                found.update(self.by_literal[literal])
        return found


@dataclass(frozen=True)
class KnowledgeBase:
    findings: dict[str, CompiledFinding]
    conditions: tuple[CompiledCondition, ...]

    @cached_property
    def gates(self) -> dict[str, GateIndex]:
        """The English and Chinese gate indexes over every finding (built on first use)."""
        en = {i: f.any_en for i, f in self.findings.items() if f.any_en is not None}
        zh = {i: f.any_zh for i, f in self.findings.items() if f.any_zh is not None}
        return {"en": GateIndex.build(en), "zh": GateIndex.build(zh)}

    @cached_property
    def lexicon(self) -> Lexicon:
        from tools.triage.text import Lexicon

        return Lexicon([p for f in self.findings.values() for p in f.finding.en])

    @cached_property
    def spread(self) -> dict[str, int]:
        """In how many conditions' emergency or urgent lines each finding (or number) is named: a
        finding few conditions name (a bulging fontanelle) tells more about *which* condition it is than
        one many name (confusion)."""
        named: dict[str, set[str]] = {}
        for compiled in self.conditions:
            for level in ("emergency", "urgent"):
                for line in compiled.lines[level]:
                    for key in line_keys(line):
                        named.setdefault(key, set()).add(compiled.condition.id)
        return {key: len(ids) for key, ids in named.items()}


def line_keys(line: Line) -> list[str]:
    """What a line's terms name: finding ids, and the measure of each number."""
    keys: list[str] = []
    for term in line.terms:
        if isinstance(term, AnyOf):
            keys.extend(term.findings)
        else:
            keys.append(term.finding or term.measure)
    return keys


# libyaml's loader where PyYAML was built with it: the knowledge base is about a megabyte of YAML.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> object:
    try:
        return yaml.load(path.read_text("utf-8"), Loader=_YAML_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise KnowledgeError(f"{path.name}: not valid YAML: {exc}") from exc


def load_kb(directory: Path = KB_DIR) -> KnowledgeBase:
    from tools.triage.levels import CATEGORIES

    finding_files = [
        (path, read_yaml(path) or {}) for path in sorted((directory / "findings").glob("*.yaml"))
    ]
    condition_files = [
        (path, read_yaml(path) or []) for path in sorted((directory / "conditions").glob("*.yaml"))
    ]
    _no_duplicate_ids(finding_files, condition_files)

    findings: dict[str, CompiledFinding] = {}
    for path, data in finding_files:
        if not isinstance(data, dict):
            raise KnowledgeError(f"{path.name}: expected a mapping of finding ids")
        for finding_id, entry in data.items():
            if not _ID.match(str(finding_id)):
                raise KnowledgeError(f"{path.name}: {finding_id!r} is not a valid id")
            try:
                finding = Finding.model_validate(
                    {**(entry or {}), "id": finding_id, "source_file": path.name}
                )
            except ValueError as exc:
                raise KnowledgeError(f"{path.name}: finding {finding_id!r}: {exc}") from exc
            try:
                en = tuple(compile_pattern(p, "en") for p in finding.en)
                zh = tuple(compile_pattern(p, "zh") for p in finding.zh)
            except KnowledgeError as exc:
                raise KnowledgeError(f"{path.name}: finding {finding_id!r}: {exc}") from exc
            findings[finding_id] = CompiledFinding(finding, en, zh, _stated_as(path, finding))

    conditions: list[CompiledCondition] = []
    for path, data in condition_files:
        if not isinstance(data, list):
            raise KnowledgeError(f"{path.name}: expected a list of conditions")
        for entry in data:
            where = f"{path.name}: condition {entry.get('id', '?') if isinstance(entry, dict) else '?'!r}"
            try:
                condition = Condition.model_validate({**entry, "source_file": path.name})
            except (ValueError, TypeError) as exc:
                raise KnowledgeError(f"{where}: {exc}") from exc
            if condition.category not in CATEGORIES:
                raise KnowledgeError(f"{where}: unknown category {condition.category!r}")
            try:
                lines = {level: tuple(parse_line(t) for t in getattr(condition, level)) for level in LEVELS}
                explained = tuple(parse_line(t) for t in condition.explained_by)
            except KnowledgeError as exc:
                raise KnowledgeError(f"{where}: {exc}") from exc
            for line in [*explained, *(line for group in lines.values() for line in group)]:
                for finding_id in line.findings:
                    if finding_id not in findings:
                        raise KnowledgeError(f"{where}: line {line.text!r} names no finding {finding_id!r}")
            if not any(lines.values()):
                raise KnowledgeError(f"{where}: no line at any level")
            conditions.append(CompiledCondition(condition, lines, explained))
    return KnowledgeBase(findings, tuple(conditions))


def _stated_as(path: Path, finding: Finding) -> Comparison | None:
    if finding.stated_as is None:
        return None
    terms = parse_line(finding.stated_as).terms
    if len(terms) != 1 or not isinstance(terms[0], Comparison) or terms[0].finding is not None:
        raise KnowledgeError(
            f"{path.name}: finding {finding.id!r}: stated_as must be one message-wide number, "
            f"got {finding.stated_as!r}"
        )
    return terms[0]


def _no_duplicate_ids(
    finding_files: list[tuple[Path, object]], condition_files: list[tuple[Path, object]]
) -> None:
    """Every id defined twice, all at once (authors of different files fix theirs in one go)."""
    where: dict[str, list[str]] = {}
    for path, data in finding_files:
        for finding_id in data if isinstance(data, dict) else ():
            where.setdefault(str(finding_id), []).append(f"findings/{path.name}")
    for path, data in condition_files:
        for entry in data if isinstance(data, list) else ():
            if isinstance(entry, dict) and "id" in entry:
                where.setdefault(str(entry["id"]), []).append(f"conditions/{path.name}")
    twice = {i: files for i, files in where.items() if len(files) > 1}
    if twice:
        listed = "; ".join(f"{i!r} in {', '.join(files)}" for i, files in sorted(twice.items()))
        raise KnowledgeError(f"ids defined more than once: {listed}")


@cache
def knowledge_base() -> KnowledgeBase:
    return load_kb()


def example_failures(kb: KnowledgeBase) -> list[str]:
    """Finding examples that their own patterns do not match (after the screen's normalisation)."""
    from tools.triage.text import normalise

    failures = []
    for compiled in kb.findings.values():
        for lang in ("en", "zh"):
            patterns = compiled.en if lang == "en" else compiled.zh
            for example in getattr(compiled.finding.examples, lang):
                text = normalise(example, kb.lexicon)
                if not any(p.search(text) for p in patterns):
                    failures.append(
                        f"{compiled.finding.source_file}: {compiled.finding.id} ({lang}): {example!r}"
                    )
    return failures


def case_failures(kb: KnowledgeBase) -> tuple[int, list[str]]:
    """Each condition's test cases through the rules (the knowledge base is what they test; the learned
    second opinion is measured by the benchmark): (cases run, failures described)."""
    from tools.triage import triage_rules as triage

    failures, total = [], 0
    for compiled in kb.conditions:
        for case in compiled.condition.tests:
            total += 1
            result = triage(case.text)
            if result.level != case.level:
                failures.append(
                    f"{compiled.condition.source_file}: {compiled.condition.id}: {case.text!r} expected "
                    f"{case.level}, got {result.level} ({result.condition}; "
                    f"{'; '.join(result.reasons)[:200]})"
                )
    return total, failures


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    try:
        kb = load_kb()
    except KnowledgeError as exc:
        print(f"knowledge base does not load: {exc}")
        return 1
    emergency = sum(1 for c in kb.conditions if c.lines["emergency"])
    print(f"{len(kb.findings)} findings, {len(kb.conditions)} conditions ({emergency} with emergency lines)")
    if command == "check":
        failures = example_failures(kb)
        for failure in failures:
            print("example not matched:", failure)
        return 1 if failures else 0
    if command == "tests":
        only = argv[1] if len(argv) > 1 else None
        total, failures = case_failures(kb)
        failures = [f for f in failures if only is None or f.startswith(only)]
        for failure in failures:
            print("FAIL", failure)
        print(f"{total - len(failures)}/{total} condition test cases pass")
        return 1 if failures else 0
    print("usage: python -m tools.triage.knowledge check|tests [FILE-PREFIX]")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
