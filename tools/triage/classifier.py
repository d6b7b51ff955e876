"""The learned second opinion: a multinomial logistic regression over {not an emergency, each emergency
category}, on all-MiniLM-L6-v2 sentence embeddings for English and TF-IDF character n-grams for Chinese
(the English model cannot read Chinese).

It is trained at first use (deterministic full-batch gradient descent, L2, about a second on 2 cores) on
a labelled set written *from the knowledge base*: ``kb/training/*.jsonl`` plus every condition's own test
cases — never on an evaluation set. Its probability of an emergency is reported on every result
(``second_opinion``); it **raises** a message to emergency only when the rules left it below and the
probability reaches :data:`RAISE_AT` (picked on the dev set by ``python -m bench.triage --sweep``, to add
at most a few points of false alarms). It never lowers what the rules decided.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from tools import embeddings
from tools.triage.knowledge import KB_DIR, knowledge_base
from tools.triage.text import is_chinese, normalise

RAISE_AT = {"en": 0.97, "zh": 0.97}
_NOT = "not_emergency"
_L2 = 1e-3
_STEPS = 400
_LR = 2.0
_lock = threading.Lock()


@dataclass(frozen=True)
class Example:
    text: str
    lang: str
    label: str  # _NOT or an emergency category


def training_set() -> list[Example]:
    examples: list[Example] = []
    for path in sorted((KB_DIR / "training").glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            emergency = row["level"] == "emergency"
            lang = row.get("lang") or ("zh" if is_chinese(row["text"]) else "en")
            examples.append(Example(row["text"], lang, row["category"] if emergency else _NOT))
    for compiled in knowledge_base().conditions:
        for case in compiled.condition.tests:
            label = compiled.condition.category if case.level == "emergency" else _NOT
            examples.append(Example(case.text, "zh" if is_chinese(case.text) else "en", label))
    return examples


def _fit(features: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Softmax regression by full-batch gradient descent: deterministic, no extra dependency."""
    n, d = features.shape
    x = np.hstack([features, np.ones((n, 1), dtype=np.float32)])
    weights = np.zeros((d + 1, classes), dtype=np.float64)
    onehot = np.eye(classes)[labels]
    counts = onehot.sum(axis=0)
    sample_weight = (1.0 / np.maximum(counts, 1.0))[labels] * n / classes  # balance the classes
    for _ in range(_STEPS):
        logits = x @ weights
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        gradient = x.T @ ((probs - onehot) * sample_weight[:, None]) / n + _L2 * weights
        weights -= _LR * gradient
    return weights


@dataclass(frozen=True)
class Model:
    """Two softmax regressions on the same features: emergency or not (classes balanced, so its
    probability is not swamped by the number of categories), and which category among emergencies."""

    categories: tuple[str, ...]
    emergency_weights: np.ndarray  # (d + 1, 2): column 1 is "emergency"
    category_weights: np.ndarray  # (d + 1, len(categories))
    vectorizer: embeddings.NgramVectorizer | None  # Chinese; None for English (sentence embeddings)

    def features(self, texts: Sequence[str]) -> np.ndarray:
        x = (
            self.vectorizer.transform(list(texts))
            if self.vectorizer is not None
            else embeddings.embed(list(texts))
        )
        return np.hstack([x, np.ones((len(texts), 1), dtype=np.float32)])

    def predict(self, texts: Sequence[str]) -> list[tuple[float, str]]:
        x = self.features(texts)
        emergency = _softmax(x @ self.emergency_weights)[:, 1]
        category = _softmax(x @ self.category_weights).argmax(axis=1)
        return [(float(p), self.categories[int(c)]) for p, c in zip(emergency, category, strict=True)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


@cache
def model(lang: str) -> Model | None:
    with _lock:
        rows = [e for e in training_set() if e.lang == lang]
        emergencies = [e for e in rows if e.label != _NOT]
        if not emergencies or len(emergencies) == len(rows):
            return None
        texts = [normalise(e.text) for e in rows]
        vectorizer = embeddings.NgramVectorizer(texts) if lang == "zh" else None
        features = vectorizer.transform(texts) if vectorizer is not None else embeddings.embed(texts)
        is_emergency = np.array([int(e.label != _NOT) for e in rows])
        categories = tuple(sorted({e.label for e in emergencies}))
        picked = np.flatnonzero(is_emergency)
        category_labels = np.array([categories.index(rows[i].label) for i in picked])
        return Model(
            categories,
            _fit(features, is_emergency, 2),
            _fit(features[picked], category_labels, len(categories)),
            vectorizer,
        )


def _lang(text: str) -> str:
    return "zh" if is_chinese(text) else "en"


def units(text: str) -> list[str]:
    """The texts this module embeds for ``text`` (English only)."""
    return [] if _lang(text) == "zh" else [normalise(text)]


def prefetch(texts: Sequence[str]) -> None:
    try:
        embeddings.prefetch([u for t in texts for u in units(t)])
    except embeddings.EmbeddingModelMissing:
        return


def opinion(text: str) -> tuple[float, str] | None:
    """(probability of an emergency, most likely emergency category), or None when it cannot run."""
    try:
        fitted = model(_lang(text))
        if fitted is None:
            return None
        return fitted.predict([normalise(text)])[0]
    except embeddings.EmbeddingModelMissing:
        return None


def review(text: str, result):
    """Attach the second opinion; raise to emergency when the rules did not and it is confident."""
    if not text.strip():
        return result
    found = opinion(text)
    if found is None:
        return result
    probability, category = found
    update: dict[str, object] = {"second_opinion": round(probability, 4)}
    if result.level != "emergency" and probability >= RAISE_AT[_lang(text)] and category is not None:
        update |= {
            "red_flag": True,
            "level": "emergency",
            "category": category,
            "decided_by": "classifier",
            "reasons": [
                f"second opinion: the learned classifier gives {probability:.2f} for an emergency "
                f"({category}) where the rules found {result.level}",
                *result.reasons,
            ],
        }
    return result.model_copy(update=update)
