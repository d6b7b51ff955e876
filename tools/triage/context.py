"""Assertion status of each finding occurrence: affirmed, negated, historical, hypothetical, family,
plus *uncertain* (still counted) and *chronic* (long-standing and unchanged).

English goes through negspacy (the NegEx mechanism on a blank spaCy pipeline, no model download): its
maintained ``en_clinical`` negation termset plus our cue lists for the other modifiers, one NegEx component
each, all over the overlapping finding spans. Chinese goes through our own rules (negation just before the
finding within its clause, the other cues within the sentence). Cue lists are data: ``kb/context.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any, Literal

from tools.triage.knowledge import KB_DIR, read_yaml

Status = Literal["affirmed", "uncertain", "negated", "historical", "hypothetical", "family", "chronic"]
# When several modifiers apply, the one listed first decides (a negated past event is negated).
_PRECEDENCE: tuple[Status, ...] = ("negated", "hypothetical", "family", "historical", "chronic", "uncertain")
_MODIFIERS = ("negated", "historical", "hypothetical", "family", "uncertain")
# negspacy's en_clinical cues that misread patients' own words: "I can't stop vomiting" is no negation.
_DROP_EN_CLINICAL = {"can't", "cant", "cannot", "couldn't", "couldnt", "doubt", "versus", "evaluate for"}


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@cache
def cues() -> dict[str, Any]:
    return read_yaml(KB_DIR / "context.yaml")


@cache
def _english_pipeline() -> Any:
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
    from negspacy.termsets import termset

    en = cues()["en"]
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer", config={"punct_chars": [".", "!", "?", "\n", ";", "。", "！", "？"]})
    for modifier in _MODIFIERS:
        spec = en[modifier]
        if modifier == "negated":
            base = termset("en_clinical").get_patterns()
            terms = {
                "pseudo_negations": [*base["pseudo_negations"], *spec.get("pseudo", [])],
                "preceding_negations": [
                    *(c for c in base["preceding_negations"] if c not in _DROP_EN_CLINICAL),
                    *spec.get("preceding", []),
                ],
                "following_negations": [*base["following_negations"], *spec.get("following", [])],
                "termination": [*base["termination"], *spec.get("termination", [])],
            }
        else:
            terms = {
                "pseudo_negations": spec.get("pseudo", []),
                "preceding_negations": spec.get("preceding", []),
                "following_negations": spec.get("following", []),
                "termination": spec.get("termination", []),
            }
        nlp.add_pipe(
            "negex",
            name=f"ctx_{modifier}",
            config={"neg_termset": terms, "extension_name": f"ctx_{modifier}", "span_keys": ["findings"]},
        )
    return nlp


def sentence_bounds(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence; a decimal point ("38.5") ends none."""
    bounds, start = [], 0
    for match in re.finditer(r"[.!?;\n。！？；]+", text):
        if match.start() > 0 and text[match.start() - 1].isdigit() and match.group(0) == ".":
            continue  # 38.5
        bounds.append((start, match.end()))
        start = match.end()
    if start < len(text):
        bounds.append((start, len(text)))
    return bounds


def sentence_of(bounds: list[tuple[int, int]], position: int, length: int) -> tuple[int, int]:
    return next(((a, b) for a, b in bounds if a <= position < b), (0, length))


@cache
def _chronic_rx(lang: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    spec = cues()[lang]
    chronic = re.compile("|".join(f"(?:{p})" for p in spec["chronic"]))
    cancel = re.compile("|".join(f"(?:{p})" for p in spec["chronic_cancelled_by"]))
    return chronic, cancel


def _chronic(sentence: str, lang: str) -> bool:
    chronic, cancel = _chronic_rx(lang)
    if not chronic.search(sentence):
        return False
    bounded = (lambda p: rf"\b(?:{p})\b") if lang == "en" else (lambda p: p)
    return not re.search(bounded(cancel.pattern), sentence)


_CONTRAST = {
    "en": re.compile(
        r"\b(?:but|however|although|though|whereas|except|this time|today|tonight|now|suddenly|this morning"
        r"|since (?:yesterday|last night|this morning))\b"
    ),
    # A fresh time anchor starts a new episode too: "腰疼好多年了，这两天两条腿都麻".
    "zh": re.compile(r"但是|但|可是|不过|然而|这次|今天|今晚|现在|这两天|这几天|刚才|刚刚|昨天|昨晚|突然"),
}


def _segment(text: str, start: int, end: int, position: int, lang: str) -> str:
    """The part of a sentence around ``position`` between contrast words: "my usual migraine, but this
    time my arm went weak" keeps "usual" away from the weak arm."""
    cuts = [start, *(m.start() for m in _CONTRAST[lang].finditer(text, start, end)), end]
    for left, right in pairwise(cuts):
        if left <= position < right:
            return text[left:right]
    return text[start:end]


@cache
def _past_time() -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in cues()["en"]["historical_patterns"]))


def _decide(flags: set[str]) -> Status:
    for status in _PRECEDENCE:
        if status in flags:
            return status
    return "affirmed"


def english_status(text: str, spans: list[Span], bounds: list[tuple[int, int]] | None = None) -> list[Status]:
    """The status of each span of ``text`` (normalised English), in order."""
    if not spans:
        return []
    nlp = _english_pipeline()
    doc = nlp.make_doc(text)
    doc = nlp.get_pipe("sentencizer")(doc)
    char_spans = []
    for span in spans:
        found = doc.char_span(span.start, span.end, alignment_mode="expand")
        char_spans.append(found)
    doc.spans["findings"] = [s for s in char_spans if s is not None]
    for modifier in _MODIFIERS:
        doc = nlp.get_pipe(f"ctx_{modifier}")(doc)
    by_offsets = {(s.start_char, s.end_char): s for s in doc.spans["findings"]}
    bounds = bounds if bounds is not None else sentence_bounds(text)
    statuses: list[Status] = []
    for span, found in zip(spans, char_spans, strict=True):
        flags: set[str] = set()
        if found is not None:
            spacy_span = by_offsets.get((found.start_char, found.end_char), found)
            flags = {m for m in _MODIFIERS if spacy_span._.get(f"ctx_{m}")}
        a, b = sentence_of(bounds, span.start, len(text))
        segment = _segment(text, a, b, span.start, "en")
        if _chronic(segment, "en"):
            flags.add("chronic")
        if _past_time().search(segment):
            flags.add("historical")
        statuses.append(_decide(flags))
    return statuses


_ZH_CLAUSE = re.compile(r"[，,：:]|但是|但|可是|然而|不过")  # 、 lists, it does not end a clause


def _clause_start(text: str, position: int, sentence_start: int) -> int:
    start = sentence_start
    for match in _ZH_CLAUSE.finditer(text, sentence_start, position):
        start = match.end()
    return start


@cache
def _zh_cue_rx(name: str) -> re.Pattern[str]:
    return re.compile("|".join(sorted(cues()["zh"][name], key=len, reverse=True)))


# "以前没有过" / "从来没有过" says the symptom is new, not that it happened before.
_ZH_NEVER_BEFORE = re.compile(r"(?:以前|之前|过去)?(?:从来)?没有?(?:过|这样过|出现过|发生过)|从来没|从没")
# A negation carries along a list: "没有胸痛和气短" negates both.
_ZH_LIST = re.compile(r"^[^，。！？；,.!?;]{0,10}?(?:和|或|或者|及|以及|、|跟|与)[^，。！？；,.!?;]{0,6}$")


def _zh_negated_list(text: str, clause_start: int, position: int) -> bool:
    before = _zh_cue_rx("pseudo_negated").sub("", text[clause_start:position])
    cues = list(_zh_cue_rx("negated").finditer(before))
    return bool(cues) and bool(_ZH_LIST.match(before[cues[-1].end() :]))


def chinese_status(text: str, spans: list[Span], bounds: list[tuple[int, int]] | None = None) -> list[Status]:
    zh = cues()["zh"]
    window = int(zh["negation_window"])
    bounds = bounds if bounds is not None else sentence_bounds(text)
    statuses: list[Status] = []
    for span in spans:
        sentence_start, sentence_end = sentence_of(bounds, span.start, len(text))
        sentence = text[sentence_start:sentence_end]
        clause_start = _clause_start(text, span.start, sentence_start)
        before = text[max(clause_start, span.start - window) : span.start]
        before = _zh_cue_rx("pseudo_negated").sub("", before)
        flags: set[str] = set()
        if _zh_cue_rx("negated").search(before) or _zh_negated_list(text, clause_start, span.start):
            flags.add("negated")
        clause_end = next(
            (m.start() for m in _ZH_CLAUSE.finditer(text, span.end, sentence_end)), sentence_end
        )
        clause_text = text[clause_start:clause_end]
        if _zh_cue_rx("historical").search(_ZH_NEVER_BEFORE.sub("", sentence)) and not _zh_cue_rx(
            "historical_cancelled_by"
        ).search(clause_text):
            flags.add("historical")
        # A question about the finding comes before it or in its own clause: "如果孩子抽搐怎么办",
        # "中风有哪些症状" — but not "右下腹疼，会不会是阑尾炎？" (asking what a real pain means).
        asked = text[sentence_start : span.start] + clause_text
        if _zh_cue_rx("hypothetical").search(asked) and not _zh_cue_rx("hypothetical_cancelled_by").search(
            clause_text
        ):
            flags.add("hypothetical")
        if _zh_cue_rx("family").search(sentence):
            flags.add("family")
        if _zh_cue_rx("uncertain").search(text[clause_start : span.start]):
            flags.add("uncertain")
        if _chronic(_segment(text, sentence_start, sentence_end, span.start, "zh"), "zh"):
            flags.add("chronic")
        statuses.append(_decide(flags))
    return statuses
