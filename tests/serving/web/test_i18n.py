"""The interface's words: every key in both languages with the same placeholders (no browser needed)."""

from __future__ import annotations

import string

from serving.web.i18n import MESSAGES


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_every_key_with_the_same_placeholders() -> None:
    english, chinese = MESSAGES["en"], MESSAGES["zh"]
    assert set(english) == set(chinese), set(english) ^ set(chinese)
    for key, text in english.items():
        assert _fields(text) == _fields(chinese[key]), key
