"""The learned second opinion: trained on the KB-written set it says it was, raises only when confident,
never lowers the rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools.triage import TriageResult, classifier


def test_the_stored_weights_were_trained_on_the_current_training_set() -> None:
    with np.load(classifier.WEIGHTS, allow_pickle=False) as stored:
        recorded = str(stored["training_sha256"])
    assert recorded == classifier.training_sha256(), "retrain: python -m tools.triage.classifier train"


def test_the_training_set_is_written_from_the_knowledge_base_not_from_an_evaluation_set() -> None:
    data = classifier.KB_DIR.parents[2] / "bench" / "data"
    sets = "".join(path.read_text("utf-8") for path in sorted(data.glob("triage-*.jsonl")))
    evaluation = {json.loads(line)["text"].strip().lower() for line in sets.splitlines() if line}
    training = {example.text.strip().lower() for example in classifier.training_set()}
    assert len(training) > 1000
    assert not training & evaluation


@pytest.mark.parametrize(
    "text",
    [
        "I'm going to kill myself tonight, I have the pills here",
        "hello, can I book a flu jab?",
        "我胸口压着痛",
    ],
)
def test_it_raises_only_when_confident_and_never_lowers(text: str) -> None:
    found = classifier.opinion(text)
    assert found is not None
    probability, category = found
    threshold = classifier.RAISE_AT["zh" if "胸" in text else "en"]
    reviewed = classifier.review(text, TriageResult(red_flag=False, level="routine"))
    assert reviewed.second_opinion == pytest.approx(probability, abs=1e-4)
    assert reviewed.red_flag == (probability >= threshold)
    if reviewed.red_flag:
        assert reviewed.decided_by == "classifier" and reviewed.category == category
    emergency = TriageResult(red_flag=True, level="emergency", category="cardiac")
    kept = classifier.review(text, emergency)
    assert (kept.level, kept.category, kept.decided_by) == ("emergency", "cardiac", "rules")


def test_a_raised_answer_names_the_rules_category_unless_the_classifier_is_clearly_ahead() -> None:
    flat = {"cardiac": 0.12, "anaphylaxis": 0.10, "breathing": 0.08}
    assert classifier.pick_category(flat) == "cardiac"  # the rules matched nothing: its own top
    assert classifier.pick_category(flat, ["anaphylaxis", "other"]) == "anaphylaxis"  # unsure: abstains
    clear = {"gi_bleed": 0.30, "cardiac": 0.12}
    assert classifier.pick_category(clear, ["cardiac"]) == "gi_bleed"  # clearly ahead of the rules' one
    assert classifier.pick_category(flat, ["infection"]) == "cardiac"  # not an emergency category
