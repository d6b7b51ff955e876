"""Semantic search over one patient's own history (reports, results, past consultations).

**Access control is not done here.** A :class:`PatientIndex` holds the records of exactly one patient,
and the caller must build it only from what ``memory/`` (``Records``, which applies the access policy
and audits denials) returned for that patient and that actor. The index never fetches anything and
never mixes patients, so it cannot widen what the caller was allowed to see.

Records are split into passages of a few sentences; a record scores the best cosine similarity of its
passages to the query. English goes through all-MiniLM-L6-v2; Chinese, which that model cannot read,
through character n-gram TF-IDF fitted on this patient's passages; mixed text blends the two by how
Chinese the query is. Ties keep insertion order, so results are deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from tools import embeddings

MAX_PASSAGE_WORDS = 60  # English words (a CJK character counts as half a word) per passage
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*|\n+")
_CJK = re.compile(r"[\u3400-\u9fff]")


class RecordItem(BaseModel):
    """One record of the patient: its id in ``memory/``, the text to search, anything to hand back."""

    id: str = Field(min_length=1)
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class Hit(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity of the best passage to the query (-1..1).")
    snippet: str = Field(description="The passage that matched best.")
    metadata: dict[str, Any]


def _length(text: str) -> float:
    return len(re.findall(r"[A-Za-z0-9]+", text)) + len(_CJK.findall(text)) / 2


def passages(text: str, max_words: int = MAX_PASSAGE_WORDS) -> list[str]:
    """Whole sentences grouped up to ``max_words``; a longer sentence is cut by words."""
    pieces: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        words = sentence.split()
        if _length(sentence) > max_words and len(words) > 1:
            pieces += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
        elif sentence:
            pieces.append(sentence)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current} {piece}".strip()
        if current and _length(candidate) > max_words:
            chunks.append(current)
            current = piece
        else:
            current = candidate
    return [*chunks, current] if current else chunks


class PatientIndex:
    """An immutable search index over one patient's records; safe to share between threads."""

    def __init__(
        self, patient_id: int | str, items: Iterable[RecordItem | tuple[str, str, Mapping[str, Any]]]
    ):
        self.patient_id = patient_id
        self.items: list[RecordItem] = [
            item
            if isinstance(item, RecordItem)
            else RecordItem(id=item[0], text=item[1], metadata=dict(item[2]))
            for item in items
        ]
        ids = [item.id for item in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate record ids for patient {patient_id}")
        self._texts: list[str] = []
        owners: list[int] = []
        for position, item in enumerate(self.items):
            for passage in passages(item.text) or [item.text]:
                self._texts.append(passage)
                owners.append(position)
        self._owners = np.array(owners, dtype=np.int64)
        self._dense = embeddings.embed(self._texts)
        self._ngrams = embeddings.NgramVectorizer(self._texts)
        self._sparse = self._ngrams.transform(self._texts)

    def __len__(self) -> int:
        return len(self.items)

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        where: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The ``k`` records closest to ``query``, best first; ``where`` keeps records whose metadata
        has those exact values, ``min_score`` drops weak matches."""
        if k < 1:
            raise ValueError("k must be at least 1")
        if not self.items or not query.strip():
            return []
        scores = self._passage_scores(query)
        best_score = np.full(len(self.items), -np.inf)
        best_passage = np.zeros(len(self.items), dtype=np.int64)
        for row, owner in enumerate(self._owners):  # passages are in record order: ties keep the first
            if scores[row] > best_score[owner]:
                best_score[owner], best_passage[owner] = scores[row], row
        hits = []
        for position in sorted(range(len(self.items)), key=lambda p: -best_score[p]):  # stable sort
            item = self.items[position]
            if where and any(item.metadata.get(key) != value for key, value in where.items()):
                continue
            score = round(float(best_score[position]), 4)
            if min_score is not None and score < min_score:
                break
            hits.append(
                Hit(
                    id=item.id,
                    score=score,
                    snippet=self._texts[best_passage[position]],
                    metadata=item.metadata,
                )
            )
            if len(hits) == k:
                break
        return hits

    def _passage_scores(self, query: str) -> np.ndarray:
        weight = 1.0 - embeddings.cjk_fraction(query)
        scores = np.zeros(len(self._texts), dtype=np.float32)
        if weight > 0:
            scores += weight * (embeddings.embed([query]) @ self._dense.T)[0]
        if weight < 1:
            scores += (1.0 - weight) * (self._ngrams.transform([query]) @ self._sparse.T)[0]
        return scores


def build_index(
    patient_id: int | str, items: Sequence[RecordItem | tuple[str, str, Mapping[str, Any]]]
) -> PatientIndex:
    """Index one patient's records (see the module note: only records ``memory/`` released)."""
    return PatientIndex(patient_id, items)
