"""Intent classification: held-out accuracy, the shape of a result, determinism."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tools.intent import EXEMPLARS, INTENTS, IntentClassifier, classify_intent, default_classifier

# Labelled messages never used as exemplars. "dev" was looked at while the exemplars were enriched;
# "test" was written afterwards and scored once (first sight: 0.955), nothing was tuned on it.
DATA = Path(__file__).with_name("data") / "intent_eval.jsonl"


def _load(split: str) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in DATA.read_text("utf-8").splitlines() if line]
    return [row for row in rows if row["split"] == split]


@pytest.fixture(scope="module")
def classifier() -> IntentClassifier:
    return default_classifier()


@pytest.mark.parametrize(("split", "floor"), [("dev", 0.94), ("test", 0.92)])
def test_held_out_accuracy(classifier: IntentClassifier, split: str, floor: float) -> None:
    rows = _load(split)
    results = classifier.classify_many([row["text"] for row in rows])
    hits = [row["intent"] == result.intent for row, result in zip(rows, results, strict=True)]
    accuracy = sum(hits) / len(hits)
    by_lang = {
        lang: sum(h for h, r in zip(hits, rows, strict=True) if r["lang"] == lang)
        / sum(1 for r in rows if r["lang"] == lang)
        for lang in ("en", "zh")
    }
    figures = f"accuracy={accuracy:.3f} en={by_lang['en']:.3f} zh={by_lang['zh']:.3f}"
    print(f"\nintent {split}: n={len(rows)} {figures}")
    assert {row["intent"] for row in rows} == set(INTENTS)
    assert accuracy >= floor
    assert min(by_lang.values()) >= floor - 0.05
    assert not {row["text"] for row in rows} & {t for texts in EXEMPLARS.values() for t in texts}


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("I have a sore throat and a fever", "consult"),
        ("please do a preliminary read of this head CT", "second_read"),
        ("convert this CT to an MRI", "image_task"),
        ("what did my last blood test say?", "history"),
        ("reset my password", "admin"),
        ("hi!", "small_talk"),
        ("我嗓子疼，还发烧", "consult"),
        ("帮我复核这个CT报告", "second_read"),
        ("把这张片子变清楚一点", "image_task"),
        ("我上个月的化验单在哪", "history"),
        ("删除我的账户", "admin"),
        ("你好呀", "small_talk"),
    ],
)
def test_clear_cases(text: str, intent: str) -> None:
    assert classify_intent(text).intent == intent


def test_result_shape() -> None:
    result = classify_intent("convert this CT to an MRI")
    assert set(result.scores) == set(INTENTS)
    assert result.runner_up != result.intent
    assert 0.5 < result.confidence <= 1.0
    assert result.runner_up_confidence <= result.confidence
    assert result.scores[result.intent] == max(result.scores.values())


def test_ambiguous_message_has_lower_confidence() -> None:
    clear = classify_intent("reset my password")
    vague = classify_intent("the report")
    assert vague.confidence < clear.confidence


def test_deterministic_and_thread_safe(classifier: IntentClassifier) -> None:
    texts = ["what did my last MRI show?", "hello", "把CT转成MRI", "second opinion on this x-ray"] * 4
    expected = [classifier.classify(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(classify_intent, texts)) == expected
    assert classifier.classify_many(texts) == expected


def test_exemplars_must_cover_every_intent() -> None:
    with pytest.raises(ValueError, match="every intent"):
        IntentClassifier({"consult": ("hello",)})  # type: ignore[dict-item]
