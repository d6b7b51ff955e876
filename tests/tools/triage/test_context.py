"""Assertion status: English through negspacy's NegEx mechanism with our cue lists, Chinese by our rules."""

from __future__ import annotations

import pytest

from tools.triage.context import Span, chinese_status, english_status
from tools.triage.text import normalise


def _status(text: str, phrase: str) -> str:
    text = normalise(text)
    start = text.index(phrase)
    assess = chinese_status if any("\u4e00" <= c <= "\u9fff" for c in phrase) else english_status
    return assess(text, [Span(start, start + len(phrase))])[0]


@pytest.mark.parametrize(
    ("text", "phrase", "status"),
    [
        ("i have chest pain", "chest pain", "affirmed"),
        ("no chest pain or sweating", "chest pain", "negated"),
        ("he denies chest pain", "chest pain", "negated"),
        ("no fever, but crushing chest pain", "chest pain", "affirmed"),
        ("i can't stop vomiting", "vomiting", "affirmed"),
        ("he is not responding and his lips are blue", "lips are blue", "affirmed"),
        ("i had a seizure 3 years ago", "seizure", "historical"),
        ("history of stroke, now my face is drooping", "face is drooping", "affirmed"),
        ("my grandmother died of a stroke", "stroke", "historical"),
        ("what are the signs of a stroke?", "stroke", "hypothetical"),
        ("if my son gets a fever what do i do", "fever", "hypothetical"),
        ("family history of heart attacks", "heart attacks", "family"),
        ("i've had this knee pain for years", "knee pain", "chronic"),
        ("i've had knee pain for years but today it is suddenly swollen", "swollen", "affirmed"),
        ("i think i might be having a heart attack", "heart attack", "uncertain"),
        ("my usual migraine but this time my arm went weak", "arm went weak", "affirmed"),
        ("my usual migraine but this time my arm went weak", "migraine", "chronic"),
        ("years ago i took an overdose", "overdose", "historical"),
        ("he had seizures in 2015 and none since", "seizures", "historical"),
        ("she had a febrile convulsion as a toddler", "febrile convulsion", "historical"),
        ("he had a seizure when he was a kid, but now he is fitting again", "fitting", "affirmed"),
    ],
)
def test_english_context(text: str, phrase: str, status: str) -> None:
    assert _status(text, phrase) == status


@pytest.mark.parametrize(
    ("text", "phrase", "status"),
    [
        ("我胸口很痛", "胸口很痛", "affirmed"),
        ("我没有胸痛", "胸痛", "negated"),
        ("不发烧，就是咳嗽", "发烧", "negated"),
        ("不发烧，就是咳嗽", "咳嗽", "affirmed"),
        ("去年中风过", "中风", "historical"),
        ("去年中风过，现在又说话不清", "说话不清", "affirmed"),
        ("如果孩子抽搐怎么办", "抽搐", "hypothetical"),
        ("中风有哪些症状", "中风", "hypothetical"),
        ("家族史有心脏病", "心脏病", "family"),
        ("膝盖痛是老毛病了，好几年了", "膝盖痛", "chronic"),
        ("叫不醒", "叫不醒", "affirmed"),
        ("我晕过去了", "晕过去", "affirmed"),
        ("老毛病头痛，但这次突然说话不清", "说话不清", "affirmed"),
        ("不停地吐血", "吐血", "affirmed"),
        ("不小心多吃了一把药", "多吃了一把药", "affirmed"),
        ("右下腹疼，会不会是阑尾炎？", "右下腹疼", "affirmed"),
        ("如果孩子发烧，抽搐了怎么办", "抽搐", "hypothetical"),
        ("没有胸痛和气短", "气短", "negated"),
        ("没有发烧、咳嗽", "咳嗽", "negated"),
        ("心脏时不时乱跳，以前没有过", "乱跳", "affirmed"),
    ],
)
def test_chinese_context(text: str, phrase: str, status: str) -> None:
    assert _status(text, phrase) == status
