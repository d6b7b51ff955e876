"""The literal pre-check of the screen: sound (never rules out a text a pattern matches) and selective."""

from __future__ import annotations

import re

import pytest

from tools.triage.knowledge import knowledge_base
from tools.triage.literals import may_match, required_literals
from tools.triage.screen import extract
from tools.triage.text import normalise


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"chest pain", {"chest pain"}),
        (r"(?:crushing|tight) chest", {" chest"}),
        (r"short(?:ness)? of breath", {" of breath"}),
        (r"(?:fever|fits?)", {"ever", "it"}),  # the parser takes the shared "f" out of the branch
        (r"(?<![\w'])(?:stiff)(?!\w)", {"stiff"}),
        (r"a*", None),  # may match the empty string: nothing required
        (r"[a-z]+", None),
        (r"(?i)pain", None),  # case-insensitive: a substring test would not be sound
    ],
)
def test_requirements(pattern: str, expected: set[str] | None) -> None:
    found = required_literals(re.compile(pattern))
    assert (set(found) if found is not None else None) == expected


def test_a_rule_out_is_never_wrong_on_the_knowledge_base_examples() -> None:
    kb = knowledge_base()
    texts = [t for f in kb.findings.values() for t in (*f.finding.examples.en, *f.finding.examples.zh)]
    texts += [case.text for c in kb.conditions for case in c.condition.tests]
    for raw in texts[:400]:
        text = normalise(raw, kb.lexicon)
        for compiled in kb.findings.values():
            for gate in (compiled.any_en, compiled.any_zh):
                if gate is not None and gate.search(text):
                    assert may_match(required_literals(gate), text), (gate.pattern[:80], raw)


def test_the_gate_index_keeps_every_finding() -> None:
    kb = knowledge_base()
    text = normalise("crushing chest pain and i am sweating, 胸痛出汗", kb.lexicon)
    worded = {o.finding for o in extract(kb, text).occurrences if o.end > o.start}
    possible = kb.gates["en"].candidates(text) | kb.gates["zh"].candidates(text)
    assert worded and worded <= possible
