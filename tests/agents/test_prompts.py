"""Every triage category has its Chinese label for the emergency text."""

from __future__ import annotations

from agents.prompts import CATEGORY_ZH
from tools.triage import CATEGORIES


def test_every_red_flag_category_speaks_chinese() -> None:
    assert set(CATEGORY_ZH) == set(CATEGORIES)
