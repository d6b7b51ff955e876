"""Required literals of a regular expression: a cheap, sound pre-check before a costly search.

The screen searches every finding's patterns in every message (hundreds of searches, most of which fail).
Most patterns cannot match without some fixed word: "chest pain" needs "pain", "short(ness)? of breath"
needs "breath". :func:`required_literals` reads those words off the parsed expression, and a plain
substring test (``word in text``) then rules a pattern out at a fraction of a search's cost. It is only
ever a shortcut: where a pattern's requirement cannot be read for sure, it gives ``None`` and the search
runs as before, so the screen finds exactly what it found without it.
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]  # the parser's opcodes
from re import _parser as sre_parse  # type: ignore[attr-defined]

Requirement = frozenset[str]  # a match contains at least one of these strings

_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT))
# Inline flags that change what a literal matches (case, Unicode case folding, verbose whitespace).
_UNSAFE_FLAGS = re.IGNORECASE | re.VERBOSE


def required_literals(pattern: re.Pattern[str]) -> Requirement | None:
    """Strings of which every match of ``pattern`` contains at least one; None when that cannot be said
    (the caller then searches regardless)."""
    if pattern.flags & _UNSAFE_FLAGS:
        return None
    try:
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    except (re.error, RecursionError):  # pragma: no cover - the pattern compiled already
        return None
    return _sequence(list(parsed))


def _sequence(items: list[tuple[object, object]]) -> Requirement | None:
    """The best requirement of a sequence of parsed items (all of which every match passes through)."""
    candidates: list[Requirement] = []
    run: list[str] = []

    def close_run() -> None:
        if run:
            candidates.append(frozenset({"".join(run)}))
            run.clear()

    for op, av in items:
        if op is sre.LITERAL:
            run.append(chr(av))  # type: ignore[arg-type]
            continue
        close_run()  # anything else may put characters between two literals
        found: Requirement | None = None
        if op is sre.SUBPATTERN:
            _group, add_flags, del_flags, body = av  # type: ignore[misc]
            if not (add_flags | del_flags) & _UNSAFE_FLAGS:
                found = _sequence(list(body))
        elif op is sre.BRANCH:
            _, branches = av  # type: ignore[misc]
            each = [_sequence(list(branch)) for branch in branches]
            if all(r is not None for r in each):
                found = frozenset().union(*each)  # type: ignore[arg-type]
        elif op in _REPEATS:
            low, _high, body = av  # type: ignore[misc]
            if low >= 1:  # the body occurs at least once
                found = _sequence(list(body))
        # Assertions, classes, categories, anchors, back references: no requirement read from them.
        if found:
            candidates.append(found)
    close_run()
    if not candidates:
        return None
    # The most selective: the requirement whose shortest string is longest (fewest chance hits).
    return max(candidates, key=lambda r: (min(len(s) for s in r), -len(r)))


def may_match(requirement: Requirement | None, text: str) -> bool:
    """False only when no match is possible (none of the required strings is in ``text``)."""
    return requirement is None or any(literal in text for literal in requirement)
