"""Datasets from feedback: corrections and ratings in the records become a snapshot with the right rows,
split by study the same way every time; the manifest verifies and catches a changed file; curated files
and regression sets are validated with clear errors."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from memory.db import make_engine, make_session_factory, transaction
from memory.migrate import upgrade
from memory.pixels import PixelStore
from memory.records import AccessDenied, NotFound, Records
from memory.schema import AuditEntry, Role
from memory.users import Principal
from tools.finetune import (
    DatasetError,
    load_regression_set,
    load_snapshot,
    rating_desirable,
    read_sections,
    register_curated,
    snapshot_from_records,
    split_of,
    validate_curated,
    verify_snapshot,
)
from tools.finetune.dataset import SPLIT_FILES, group_hash
from tools.finetune.vqa import SAMPLE_SET, freeze_regression_set, read_items

SETUP = Principal(user_id=0, name="setup", role=Role.admin)
PATIENT_NAME = "Zelda Quarrington"  # must never reach a dataset file


@pytest.fixture
def sessions(database_url: str):
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def pixels(tmp_path: Path) -> PixelStore:
    return PixelStore(tmp_path / "pixels")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def provenance(version: str, plugin: str = "comprehension") -> dict:
    return {"model": "tiny", "plugin": plugin, "adapter_version": version}


def draft(findings: str, impression: str) -> str:
    """A draft as the agent's second read writes it."""
    return f"Findings: {findings}\nImpression: {impression}\nConfidence (mean token log-probability): -5.1"


@dataclass
class World:
    sessions: object
    admin: Principal
    doctor: Principal
    patient: Principal
    patient_id: int


def make_world(sessions) -> World:
    with transaction(sessions) as session:
        records = Records(session, SETUP)
        admin, _ = records.create_user("admin", Role.admin)
        doctor, _ = records.create_user("doc", Role.physician)
        patient, _ = records.create_user("pat", Role.patient)
        patient_id = records.create_patient(PATIENT_NAME, patient.id).id
        records.add_to_care_team(doctor.id, patient_id)
    return World(
        sessions,
        Principal(admin.id, "admin", Role.admin),
        Principal(doctor.id, "doc", Role.physician),
        Principal(patient.id, "pat", Role.patient),
        patient_id,
    )


def corrected_read(
    world: World,
    pixels: PixelStore | None,
    colour: tuple[int, int, int] | None,
    version: str,
    drafted: str,
    corrected: str,
    *,
    plugin: str = "comprehension",
) -> tuple[int, int]:
    """A study (with its picture unless ``colour`` is None), an AI read, and the physician's correction
    as the agent records it: the signed text, and a correction feedback. Returns (study id, read id)."""
    with transaction(world.sessions) as session:
        records = Records(session, world.doctor)
        key = pixels.put(png(colour)) if colour is not None and pixels is not None else None
        study = records.add_study(world.patient_id, modality="CT", pixel_key=key)
        read = records.add_read(study.id, drafted, provenance(version, plugin))
        records.sign_read(read.id, corrected)
        records.add_feedback("correction", {"text": corrected, "draft": drafted}, read_id=read.id)
        return study.id, read.id


def rated_answer(world: World, pixels: PixelStore, thread: str, payload: dict, version: str = "v1") -> None:
    """A patient's question with a picture, the model's answer, and the patient's rating of it."""
    with transaction(world.sessions) as session:
        records = Records(session, world.patient)
        records.open_consultation(thread, world.patient_id)
        key = pixels.put(png((5, 5, len(thread) * 20)))
        records.add_message(thread, "patient", f"Is this rash serious? ({thread})", attachments=[key])
        answer = records.add_message(
            thread, "assistant", f"It looks benign ({thread}).", provenance=provenance(version)
        )
        records.add_feedback("rating", payload, message_id=answer.id)


def lines(directory: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (directory / SPLIT_FILES[split]).read_text().splitlines()]


def test_corrections_and_ratings_become_a_snapshot(sessions, pixels: PixelStore, tmp_path: Path) -> None:
    world = make_world(sessions)
    first_study, _ = corrected_read(
        world,
        pixels,
        (200, 30, 30),
        "v1",
        draft("A large effusion.", "Abnormal."),
        "Findings: No focal consolidation.\nImpression: Normal study.",
    )
    corrected_read(
        world,
        pixels,
        (30, 190, 60),
        "v1",
        draft("No effusion.", "Normal study."),
        "Findings: No effusion.\nImpression: Severe pneumothorax.",
    )
    corrected_read(world, pixels, None, "v1", draft("x", "y"), "Findings: z")  # no picture: skipped
    corrected_read(world, pixels, (1, 2, 3), "g1", draft("x", "y"), "Findings: z", plugin="generation")
    for thread, payload in [
        ("c-up", {"stars": 5}),
        ("c-down", {"stars": 1}),
        ("c-mid", {"stars": 3}),
        ("c-thumb", {"thumbs": "down"}),
    ]:
        rated_answer(world, pixels, thread, payload)
    with transaction(sessions) as session:  # a patient's "correction" is no clinical ground truth
        records = Records(session, world.patient)
        answer = records.list_messages("c-up")[-1]
        records.add_feedback("correction", {"text": "I disagree"}, message_id=answer.id)

    with transaction(sessions) as session:
        manifest = snapshot_from_records(
            Records(session, world.admin), "comprehension", tmp_path / "ds", pixels
        )
    rows = lines(tmp_path / "ds", "train") + lines(tmp_path / "ds", "heldout")
    supervised = sorted((r["section"], r["answer"]) for r in rows if "answer" in r and "desirable" not in r)
    assert supervised == [
        ("findings", "No effusion."),
        ("findings", "No focal consolidation."),
        ("impression", "Normal study."),
        ("impression", "Severe pneumothorax."),
    ]
    pairs = sorted((r["chosen"], r["rejected"]) for r in rows if "chosen" in r)
    # The unchanged section ("No effusion.") is no preference; the confidence line is not model text.
    assert pairs == [
        ("No focal consolidation.", "A large effusion."),
        ("Normal study.", "Abnormal."),
        ("Severe pneumothorax.", "Normal study."),
    ]
    rated = sorted((r["answer"], r["desirable"]) for r in rows if "desirable" in r)
    assert rated == [
        ("It looks benign (c-down).", False),
        ("It looks benign (c-thumb).", False),
        ("It looks benign (c-up).", True),
    ]
    assert {r["adapter_version"] for r in rows} == {"v1"}
    questions = {r["question"] for r in rows}
    assert (
        "Describe the findings in this CT image." in questions and "Is this rash serious? (c-up)" in questions
    )
    assert all(r["image_key"] in manifest.images for r in rows)
    total = {
        kind: manifest.counts["train"][kind] + manifest.counts["heldout"][kind]
        for kind in ("sft", "pair", "kto")
    }
    assert total == {"sft": 4, "pair": 3, "kto": 3}
    assert manifest.skipped == {
        "correction_not_by_physician": 1,
        "image_missing": 1,
        "rating_neutral_or_unreadable": 1,
    }
    assert manifest.adapter_versions == {"v1": 10}
    # No patient id, name or record id in the files: the study is a hashed group.
    for name in [*SPLIT_FILES.values(), "manifest.json"]:
        text = (tmp_path / "ds" / name).read_text()
        assert PATIENT_NAME not in text and "patient" not in text
    first = [r for r in rows if "No focal consolidation." in (r.get("answer"), r.get("chosen"))]
    assert len(first) == 2 and {r["group"] for r in first} == {group_hash(f"study:{first_study}")}
    # The listing is an admin's audited action: one row per patient read, one summary.
    with sessions() as session:
        audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "feedback.read")).all()
    assert [(a.patient_id, a.detail["feedback"]) for a in audited] == [(world.patient_id, 8), (None, 8)]


def test_only_admins_list_training_feedback(sessions, tmp_path: Path) -> None:
    world = make_world(sessions)
    with pytest.raises(AccessDenied), transaction(sessions) as session:
        Records(session, world.doctor).training_feedback("comprehension")
    with sessions() as session:
        denied = session.scalars(select(AuditEntry).where(AuditEntry.outcome == "denied")).all()
    assert [(d.action, d.detail["reason"]) for d in denied] == [
        ("feedback.read", "only admins build training datasets")
    ]
    with (
        pytest.raises(NotFound, match="neither registered nor in feedback"),
        transaction(sessions) as session,
    ):
        Records(session, world.admin).training_feedback("comprehension", since_version="v-none")


def test_since_a_version_or_a_date(sessions, pixels: PixelStore, tmp_path: Path) -> None:
    world = make_world(sessions)
    corrected_read(world, pixels, (1, 1, 1), "v1", draft("a", "b"), "Findings: old")
    with transaction(sessions) as session:
        Records(session, world.admin).register_adapter("comprehension", "v2", ["adapter.safetensors"])
    corrected_read(world, pixels, (2, 2, 2), "v1", draft("a", "b"), "Findings: late for v1")
    moment = datetime.now(UTC)
    corrected_read(world, pixels, (3, 3, 3), "v2", draft("a", "b"), "Findings: from v2")

    def answers(**since) -> list[str]:
        with transaction(sessions) as session:
            items = Records(session, world.admin).training_feedback("comprehension", **since)
        return [item.final for item in items]

    assert answers() == ["Findings: old", "Findings: late for v1", "Findings: from v2"]
    # Since v2 came in (its registration): what was given after, whichever version drafted it.
    assert answers(since_version="v2") == ["Findings: late for v1", "Findings: from v2"]
    # A version never registered starts at its first feedback.
    assert answers(since_version="v1") == ["Findings: old", "Findings: late for v1", "Findings: from v2"]
    assert answers(since=moment) == ["Findings: from v2"]
    assert answers(since=moment.replace(tzinfo=None)) == ["Findings: from v2"]  # naive means UTC


def test_the_split_is_by_study_and_stable(sessions, pixels: PixelStore, tmp_path: Path) -> None:
    world = make_world(sessions)
    for shade in range(10):
        corrected_read(
            world,
            pixels,
            (shade * 20, 10, 10),
            "v1",
            draft("a", "b"),
            f"Findings: finding {shade}.\nImpression: impression {shade}.",
        )

    def snapshot(name: str):
        with transaction(sessions) as session:
            records = Records(session, world.admin)
            return snapshot_from_records(
                records, "comprehension", tmp_path / name, pixels, heldout_fraction=0.3
            )

    first, second = snapshot("one"), snapshot("two")
    assert first.files == second.files and first.digest == second.digest  # the same bytes, every run
    assert first.counts["heldout"]["sft"] > 0 and first.counts["train"]["sft"] > 0
    sides = {}
    for split in ("train", "heldout"):
        for row in lines(tmp_path / "one", split):
            assert sides.setdefault(row["group"], split) == split  # a study never straddles
            assert split_of(row["group"], 0.3) == split
    # More feedback later moves no study: the split is a function of the study alone.
    corrected_read(world, pixels, (250, 250, 250), "v1", draft("a", "b"), "Findings: new.")
    third = snapshot("three")
    for split in ("train", "heldout"):
        for row in lines(tmp_path / "three", split):
            assert sides.get(row["group"], split) == split
    assert third.digest != first.digest


def test_the_manifest_verifies_and_catches_changes(sessions, pixels: PixelStore, tmp_path: Path) -> None:
    world = make_world(sessions)
    for shade in range(6):
        corrected_read(world, pixels, (10, shade * 40, 10), "v1", draft("a", "b"), f"Findings: f{shade}")
    with transaction(sessions) as session:
        manifest = snapshot_from_records(
            Records(session, world.admin), "comprehension", tmp_path / "ds", pixels, heldout_fraction=0.5
        )
    snapshot = load_snapshot(tmp_path / "ds", pixels)
    assert len(snapshot.train) + len(snapshot.heldout) == 6 + 6  # an sft row and a pair per read
    assert all(row.image is not None and row.image.is_file() for row in snapshot.train + snapshot.heldout)
    assert snapshot.manifest.digest == manifest.digest

    with pytest.raises(DatasetError, match="immutable"):
        with transaction(sessions) as session:
            snapshot_from_records(Records(session, world.admin), "comprehension", tmp_path / "ds", pixels)

    changed = tmp_path / "changed"
    shutil.copytree(tmp_path / "ds", changed)
    name = max(SPLIT_FILES.values(), key=lambda n: manifest.files[n].rows)
    (changed / name).write_text((changed / name).read_text().replace("Describe", "describe", 1))
    with pytest.raises(DatasetError, match=rf"{name}: sha256 [0-9a-f]{{64}} differs") as caught:
        load_snapshot(changed, pixels)
    assert len(caught.value.problems) == 1

    key = next(iter(manifest.images))
    victim = pixels.path(key)
    victim.chmod(0o644)
    victim.write_bytes(png((0, 0, 0), (8, 8)))
    with pytest.raises(DatasetError, match=f"image {key}: .*corrupt"):
        verify_snapshot(tmp_path / "ds", pixels)


def test_curated_datasets_are_validated_with_clear_errors(pixels: PixelStore, tmp_path: Path) -> None:
    (tmp_path / "scan.jpg").write_bytes(_jpeg_with_exif())
    (tmp_path / "notes.png").write_text("not a picture")
    good = tmp_path / "good.jsonl"
    good.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {
                    "question": "What is shown?",
                    "answer": "A normal chest.",
                    "image": "scan.jpg",
                    "group": "s1",
                },
                {"question": "And the impression?", "answer": "Normal.", "image": "scan.jpg", "group": "s1"},
                {"question": "Define effusion.", "answer": "Fluid in the pleural space."},
            ]
        )
        + "\n\n"
    )
    manifest = register_curated(good, tmp_path / "curated", pixels, "comprehension")
    assert manifest.source == "curated" and manifest.selection["rows"] == 3
    assert sum(manifest.counts[s]["sft"] for s in ("train", "heldout")) == 3
    (key,) = manifest.images
    stored = pixels.get(key)
    assert stored.startswith(b"\x89PNG") and b"Exif" not in stored  # pixels only
    snapshot = load_snapshot(tmp_path / "curated", pixels)
    groups = {
        row["group"]
        for split in SPLIT_FILES
        for row in lines(tmp_path / "curated", split)
        if row["question"] != "Define effusion."
    }
    assert len(groups) == 1 and len(snapshot.train) + len(snapshot.heldout) == 3

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                '{"question": "Q", "answer": "A"}',
                "{not json",
                '["a", "list"]',
                '{"question": "Q"}',
                '{"question": " ", "answer": "A", "answr": "typo"}',
                '{"question": "Q", "answer": "A", "image": "missing.png"}',
                '{"question": "Q", "answer": "A", "image": "notes.png"}',
                '{"question": "Q", "answer": "A", "group": 7}',
            ]
        )
    )
    with pytest.raises(DatasetError) as caught:
        validate_curated(bad)
    assert caught.value.problems == [
        "bad.jsonl:2: not JSON (Expecting property name enclosed in double quotes at column 2)",
        "bad.jsonl:3: a row must be a JSON object, not list",
        "bad.jsonl:4: 'answer' must be a non-empty string",
        "bad.jsonl:5: unknown key(s) 'answr'; a row has ('question', 'answer', 'image', 'group')",
        "bad.jsonl:5: 'question' must be a non-empty string",
        "bad.jsonl:6: image not found: missing.png",
        "bad.jsonl:7: image notes.png: the file is not a readable image (PNG, JPEG, BMP, TIFF, WebP or GIF)",
        "bad.jsonl:8: 'group' must be a non-empty string when given",
    ]
    assert "bad.jsonl:6: image not found" in str(caught.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="holds no rows"):
        validate_curated(empty)
    with pytest.raises(DatasetError, match="not found"):
        validate_curated(tmp_path / "absent.jsonl")


def _jpeg_with_exif() -> bytes:
    image = Image.new("RGB", (24, 24), (120, 130, 140))
    exif = Image.Exif()
    exif[0x010E] = "Patient: Zelda Quarrington"  # ImageDescription
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_read_sections_and_star_threshold() -> None:
    assert read_sections(draft("A\nmore.", "B")) == {"findings": "A\nmore.", "impression": "B"}
    assert read_sections("Just a sentence.") == {"findings": "Just a sentence."}
    assert read_sections("Findings: (none stated)\nImpression: C\nImage quality: blurred") == {
        "impression": "C"
    }
    assert [rating_desirable({"stars": s}) for s in range(1, 6)] == [False, False, None, True, True]
    assert rating_desirable({"thumbs": "up"}) is True and rating_desirable({"thumbs": "down"}) is False
    assert rating_desirable({"stars": 4.5}) is None and rating_desirable({}) is None


def test_the_shipped_regression_set_verifies(tmp_path: Path) -> None:
    shipped = load_regression_set()
    assert shipped.manifest.synthetic and "SYNTHETIC" in shipped.manifest.description
    assert len(shipped.items) == 8 and all(item.image is not None for item in shipped.items)
    copy = tmp_path / "copy"
    shutil.copytree(SAMPLE_SET, copy)
    (copy / "images" / "phantom-01.png").write_bytes(png((0, 0, 0)))
    with pytest.raises(DatasetError, match=r"images/phantom-01\.png: sha256"):
        load_regression_set(copy)
    with pytest.raises(DatasetError, match="frozen already"):
        freeze_regression_set(copy, name="x", description="x", synthetic=True)


def test_regression_items_are_validated(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text(
        "\n".join(
            [
                '{"id": "a", "question": "Q?", "choices": ["yes", "no"], "answer": 1}',
                '{"id": "a", "question": "Q?", "choices": ["yes", "no"], "answer": 0}',
                '{"id": "b", "question": "Q?", "choices": ["yes", "yes"], "answer": 0}',
                '{"id": "c", "question": "Q?", "choices": ["yes", "no"], "answer": 2}',
                '{"id": "d", "question": "Q?", "choices": ["yes", "no"], "answer": 0, "image": "../x.png"}',
                '{"id": "e", "question": "Q?", "choices": ["yes", "no"], "answer": 0, "extra": 1}',
            ]
        )
    )
    with pytest.raises(DatasetError) as caught:
        read_items(tmp_path)
    assert caught.value.problems == [
        "items.jsonl:2: id 'a' is used twice",
        "items.jsonl:3: 'choices' must be 2 to 26 distinct non-blank strings",
        "items.jsonl:4: 'answer' must be the 0-based index of the correct choice",
        "items.jsonl:5: 'image' must be a path inside the set's folder",
        "items.jsonl:6: unknown key(s) 'extra'",
    ]
