"""The learned second opinion: two logistic regressions (scikit-learn) — emergency or not, and which
emergency category — on all-MiniLM-L6-v2 sentence embeddings for English and TF-IDF character n-grams
for Chinese (the English model cannot read Chinese). It reads the message as written, so its embedding is
the one the intent classifier already computed for the turn (``tools/specialists.py``): no second one.

Trained on a labelled set written *from the knowledge base* (``kb/training/*.jsonl``), never on an
evaluation set: ``python -m tools.triage.classifier train`` fits both languages (deterministic L-BFGS;
about ten seconds on 2 cores, mostly embedding) and stores plain arrays in ``second_opinion.npz`` with the
training set's sha256, which a test compares, so the weights never drift from the data silently.

Its probability of an emergency is reported on every result (``second_opinion``); it **raises** a
message to emergency only when the rules left it below and the probability reaches :data:`RAISE_AT`
(picked on the dev set with ``python -m bench.triage --sweep``). It never lowers what the rules decided;
where the rules found a same-day condition of an emergency category, the raised answer keeps that category.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from tools import embeddings
from tools.triage.knowledge import KB_DIR
from tools.triage.levels import EMERGENCY_CATEGORIES
from tools.triage.text import language_of

# Picked on the dev set by ``python -m bench.triage --sweep`` with the rule fixed there (the lowest
# threshold adding at most 3 points of false alarms over the rules). The rules were tuned on dev, so there
# the classifier adds little (English: 0.7 would add 3.9 points of false alarms, 0.8 adds 0.9; Chinese: 0.6
# adds 2.7); the frozen set says what it adds on unseen text.
RAISE_AT = {"en": 0.8, "zh": 0.6}
_NOT = "not_emergency"
_C = 1.0  # inverse L2 strength (scikit-learn's default)
# The category model: classes balanced and weaker regularisation, picked by 3-fold cross-validation on the
# training set alone (C=1 unbalanced underfits: it names the largest class, breathing, for most Chinese text).
_CATEGORY_C = 4.0
# Where the rules matched conditions (at any level) of emergency categories, the second opinion names its
# own top category only when that is clearly ahead — at least this many times as likely as the best of the
# rules' categories; when unsure it abstains and the best of the rules' categories stands. (Balanced over 25
# categories its probabilities are flat, a top of 0.1-0.3 being usual, so a ratio rather than a floor.)
CATEGORY_MARGIN = 2.0
WEIGHTS = Path(__file__).with_name("second_opinion.npz")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    text: str
    lang: str
    label: str  # _NOT or an emergency category


def training_files() -> list[Path]:
    return sorted((KB_DIR / "training").glob("*.jsonl"))


def training_sha256() -> str:
    digest = hashlib.sha256()
    for path in training_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def training_set() -> list[Example]:
    examples: list[Example] = []
    for path in training_files():
        for line in path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            emergency = row["level"] == "emergency"
            lang = row.get("lang") or language_of(row["text"])
            examples.append(Example(row["text"], lang, row["category"] if emergency else _NOT))
    return examples


@dataclass(frozen=True)
class Model:
    """Two logistic regressions on the same features: emergency or not (classes balanced, so the
    probability is not swamped by the number of categories), and which category among emergencies.
    Stored as plain arrays (no pickles): weights, biases, class names, and for Chinese the n-gram
    vocabulary with its IDF."""

    emergency_w: np.ndarray  # (d,)
    emergency_b: float
    category_w: np.ndarray  # (k, d)
    category_b: np.ndarray  # (k,)
    categories: tuple[str, ...]
    vocabulary: dict[str, int] | None  # Chinese character n-grams; None for English (sentence embeddings)
    idf: np.ndarray | None

    @cached_property
    def _vectorizer(self) -> TfidfVectorizer | None:
        if self.vocabulary is None or self.idf is None:
            return None
        vectorizer = TfidfVectorizer(**_ZH_FEATURES, vocabulary=self.vocabulary)
        vectorizer.idf_ = self.idf
        return vectorizer

    def features(self, texts: Sequence[str]) -> Any:
        if self._vectorizer is not None:
            return self._vectorizer.transform(list(texts))
        return embeddings.embed(list(texts))

    def predict(self, texts: Sequence[str]) -> list[tuple[float, str]]:
        return [(p, max(shares, key=shares.__getitem__)) for p, shares in self.predict_shares(texts)]

    def predict_shares(self, texts: Sequence[str]) -> list[tuple[float, dict[str, float]]]:
        """(probability of an emergency, probability of each emergency category) for each text."""
        x = self.features(texts)
        probability = 1.0 / (1.0 + np.exp(-(np.asarray(x @ self.emergency_w).ravel() + self.emergency_b)))
        scores = np.asarray(x @ self.category_w.T) + self.category_b
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        shares = scores / scores.sum(axis=1, keepdims=True)
        return [
            (float(p), {c: float(s) for c, s in zip(self.categories, row, strict=True)})
            for p, row in zip(probability, shares, strict=True)
        ]


_ZH_FEATURES: dict[str, Any] = {"analyzer": "char", "ngram_range": (1, 2), "sublinear_tf": True}


def fit(lang: str, rows: Sequence[Example]) -> Model:
    """Train on ``rows`` (deterministic: L-BFGS from zeros)."""
    texts = [e.text for e in rows]
    vocabulary = idf = None
    if lang == "zh":
        # Characters and character pairs: Chinese needs no word segmenter for this.
        vectorizer = TfidfVectorizer(**_ZH_FEATURES, min_df=2)
        features = vectorizer.fit_transform(texts)
        vocabulary = {str(k): int(v) for k, v in vectorizer.vocabulary_.items()}
        idf = vectorizer.idf_.astype(np.float64)
    else:
        features = embeddings.embed(texts)
    labels = np.array([int(e.label != _NOT) for e in rows])
    emergency = LogisticRegression(C=_C, class_weight="balanced", max_iter=5000).fit(features, labels)
    picked = np.flatnonzero(labels)
    category = LogisticRegression(C=_CATEGORY_C, class_weight="balanced", max_iter=5000).fit(
        features[picked], [rows[i].label for i in picked]
    )
    return Model(
        emergency_w=emergency.coef_[0].astype(np.float64),
        emergency_b=float(emergency.intercept_[0]),
        category_w=category.coef_.astype(np.float64),
        category_b=category.intercept_.astype(np.float64),
        categories=tuple(str(c) for c in category.classes_),
        vocabulary=vocabulary,
        idf=idf,
    )


def train(path: Path = WEIGHTS) -> dict[str, Any]:
    """Fit both languages on the training set and store the weights with the set's sha256."""
    arrays: dict[str, Any] = {"training_sha256": np.array(training_sha256())}
    counts: dict[str, Any] = {}
    for lang in ("en", "zh"):
        rows = [e for e in training_set() if e.lang == lang]
        fitted = fit(lang, rows)
        arrays |= {
            f"{lang}_emergency_w": fitted.emergency_w,
            f"{lang}_emergency_b": np.array(fitted.emergency_b),
            f"{lang}_category_w": fitted.category_w,
            f"{lang}_category_b": fitted.category_b,
            f"{lang}_categories": np.array(json.dumps(fitted.categories)),
        }
        if fitted.vocabulary is not None and fitted.idf is not None:
            arrays |= {f"{lang}_vocabulary": np.array(json.dumps(fitted.vocabulary, ensure_ascii=False)),
                       f"{lang}_idf": fitted.idf}  # fmt: skip
        counts[lang] = {"rows": len(rows), "emergencies": sum(e.label != _NOT for e in rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return {"weights": str(path), "training_sha256": training_sha256(), **counts}


@cache
def stored() -> dict[str, np.ndarray] | None:
    if not WEIGHTS.exists():
        log.warning("no second-opinion weights at %s: the rules decide alone", WEIGHTS)
        return None
    with np.load(WEIGHTS, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@cache
def model(lang: str) -> Model | None:
    arrays = stored()
    if arrays is None or f"{lang}_emergency_w" not in arrays:
        return None
    vocabulary = arrays.get(f"{lang}_vocabulary")
    return Model(
        emergency_w=arrays[f"{lang}_emergency_w"],
        emergency_b=float(arrays[f"{lang}_emergency_b"]),
        category_w=arrays[f"{lang}_category_w"],
        category_b=arrays[f"{lang}_category_b"],
        categories=tuple(json.loads(str(arrays[f"{lang}_categories"]))),
        vocabulary=json.loads(str(vocabulary)) if vocabulary is not None else None,
        idf=arrays.get(f"{lang}_idf"),
    )


def shares(text: str) -> tuple[float, dict[str, float]] | None:
    """(probability of an emergency, probability of each emergency category), or None when it cannot run."""
    try:
        fitted = model(language_of(text))
        if fitted is None:
            return None
        return fitted.predict_shares([text])[0]
    except embeddings.EmbeddingModelMissing:
        return None


def opinion(text: str) -> tuple[float, str] | None:
    """(probability of an emergency, most likely emergency category), or None when it cannot run."""
    found = shares(text)
    if found is None:
        return None
    probability, by_category = found
    return probability, max(by_category, key=by_category.__getitem__)


def pick_category(by_category: dict[str, float], nearest: Sequence[str] = ()) -> str:
    """The category a raised answer names. The rules' conditions that matched below emergency say *what*
    the message shows (their discriminators matched); the second opinion says *how urgent*. So where the
    rules matched conditions of emergency categories, the classifier chooses among those unless its own top
    category is clearly ahead (:data:`CATEGORY_MARGIN`); where they matched none, its own top category."""
    top = max(by_category, key=by_category.__getitem__)
    candidates = [c for c in dict.fromkeys(nearest) if c in EMERGENCY_CATEGORIES]
    if not candidates or top in candidates:
        return top
    best = max(candidates, key=lambda c: by_category.get(c, 0.0))
    return top if by_category[top] >= CATEGORY_MARGIN * by_category.get(best, 0.0) else best


def review(text: str, result, nearest: Sequence[str] = ()):
    """Attach the second opinion; raise to emergency when the rules did not and it is confident.
    ``nearest``: the categories of the conditions the rules matched (most urgent first)."""
    if not text.strip():
        return result
    found = shares(text)
    if found is None:
        return result
    probability, by_category = found
    update: dict[str, object] = {"second_opinion": round(probability, 4)}
    if result.level != "emergency" and probability >= RAISE_AT[language_of(text)] and by_category:
        if result.category is not None and not nearest:
            nearest = (result.category,)
        category = pick_category(by_category, nearest)
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


if __name__ == "__main__":
    if sys.argv[1:] != ["train"]:
        sys.exit("usage: python -m tools.triage.classifier train")
    report = train()
    report["weights"] = str(WEIGHTS.relative_to(Path(__file__).resolve().parents[2]))
    print(json.dumps(report, indent=1))
