"""Dataset snapshots: the rows of one fine-tune, frozen as files so that a run is reproducible and
verifiable.

A snapshot is a folder::

    manifest.json    what is in it: counts, the selection, the split rule, each file's sha256
    train.jsonl      rows to train on
    heldout.jsonl    rows the evaluation gate scores (never trained on)

Each JSONL line is a row in the shapes :mod:`models.training.data` reads — ``{"question", "answer"}``
(supervised), ``{"question", "chosen", "rejected"}`` (preference pair), ``{"question", "answer",
"desirable"}`` (unpaired rating) — with ``image_key`` instead of an image path: the pixel-store key of the
de-identified picture, which is the sha256 of its bytes. Kept beside each row, ignored by training:
``adapter_version`` (the version whose output the feedback was about), ``source``, ``feedback_id``,
``section`` and ``group`` (the hashed study the row belongs to). No patient id is ever written.

The split is by study: ``group`` is ``sha256(salt + study key)`` and a row is held out when the first 8
bytes of it, read as a fraction of 2^64, fall below the held-out fraction. The same study always lands on
the same side, however many other rows the dataset holds, and never on both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from memory.pixels import PixelStore, PixelStoreError
from models.training.data import Row, parse_row

FORMAT = "healthagent-dataset/1"
MANIFEST_FILE = "manifest.json"
SPLIT_FILES = {"train": "train.jsonl", "heldout": "heldout.jsonl"}
SPLIT_SALT = "healthagent-split/1"
DEFAULT_HELDOUT_FRACTION = 0.2  # one study in five held out: enough to score, most kept for training

Kind = Literal["sft", "pair", "kto"]
Split = Literal["train", "heldout"]


class DatasetError(ValueError):
    """A dataset that cannot be written, read or trusted; ``problems`` lists every reason found."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems) or [message]
        super().__init__(message if not problems else f"{message}:\n  " + "\n  ".join(self.problems))


def group_hash(study_key: str, salt: str = SPLIT_SALT) -> str:
    """The row's group as written to the files: a study key (``study:12``, ``image:<key>``, …) hashed,
    so the files name no record."""
    return hashlib.sha256(f"{salt}\0{study_key}".encode()).hexdigest()


def split_of(group: str, heldout_fraction: float) -> Split:
    """``heldout`` or ``train`` for a hashed group; stable across runs and across dataset sizes."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError("heldout_fraction must be in [0, 1)")
    position = int(group[:16], 16) / 2**64
    return "heldout" if position < heldout_fraction else "train"


@dataclass(frozen=True)
class DatasetRow:
    kind: Kind
    question: str
    answer: str  # the supervised answer, the preferred one (a pair's ``chosen``) or the rated one
    group: str  # hashed study key, see group_hash()
    source: str  # read-correction, message-correction, read-rating, message-rating, curated
    rejected: str | None = None
    desirable: bool | None = None
    image_key: str | None = None
    adapter_version: str | None = None
    feedback_id: int | None = None
    section: str | None = None  # which part of a read (findings, impression)

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"question": self.question}
        if self.kind == "pair":
            line |= {"chosen": self.answer, "rejected": self.rejected}
        else:
            line["answer"] = self.answer
        if self.kind == "kto":
            line["desirable"] = self.desirable
        extra = {
            "image_key": self.image_key,
            "adapter_version": self.adapter_version,
            "source": self.source,
            "feedback_id": self.feedback_id,
            "section": self.section,
            "group": self.group,
        }
        return line | {k: v for k, v in extra.items() if v is not None}


class FileEntry(BaseModel):
    sha256: str
    bytes: int
    rows: int


class SplitRule(BaseModel):
    by: Literal["study"] = "study"
    salt: str = SPLIT_SALT
    heldout_fraction: float


class Manifest(BaseModel):
    format: Literal["healthagent-dataset/1"] = FORMAT
    plugin: str
    source: Literal["feedback", "curated"]
    created_at: datetime
    selection: dict[str, Any] = Field(description="What was selected: since_version, since, the source file")
    split: SplitRule
    counts: dict[str, dict[str, int]] = Field(description="Rows per split and kind")
    skipped: dict[str, int] = Field(default_factory=dict, description="Feedback left out, per reason")
    adapter_versions: dict[str, int] = Field(
        default_factory=dict, description="Rows per adapter version that produced the rated output"
    )
    files: dict[str, FileEntry]
    images: dict[str, int] = Field(description="Pixel-store key (the sha256 of the bytes) -> size")
    digest: str = Field(description="sha256 over the files' and images' hashes: the dataset's identity")


def content_digest(files: dict[str, FileEntry], images: Iterable[str]) -> str:
    canonical = json.dumps(
        {"files": {n: e.sha256 for n, e in sorted(files.items())}, "images": sorted(images)}
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Snapshot:
    """A verified snapshot: its manifest, and its rows as training reads them (images as paths into the
    pixel store)."""

    directory: Path
    manifest: Manifest
    train: list[Row] = field(default_factory=list)
    heldout: list[Row] = field(default_factory=list)


def write_snapshot(
    out_dir: Path,
    rows: Sequence[DatasetRow],
    *,
    pixels: PixelStore | None,
    plugin: str,
    source: Literal["feedback", "curated"],
    selection: dict[str, Any],
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    skipped: dict[str, int] | None = None,
) -> Manifest:
    """Split ``rows`` by study and write them as a snapshot in ``out_dir`` (created; a snapshot is
    immutable, so a folder that holds one already is refused). Rows are written in the order given."""
    if (out_dir / MANIFEST_FILE).exists():
        raise DatasetError(f"{out_dir} already holds a dataset snapshot; snapshots are immutable")
    if not 0.0 <= heldout_fraction < 1.0:
        raise DatasetError(f"heldout_fraction must be in [0, 1), not {heldout_fraction}")
    images: dict[str, int] = {}
    for row in rows:
        if row.image_key is not None and row.image_key not in images:
            if pixels is None:
                raise DatasetError("rows reference images but no pixel store was given")
            try:
                images[row.image_key] = pixels.path(row.image_key).stat().st_size
            except PixelStoreError as exc:
                raise DatasetError(f"image {row.image_key} is not in the pixel store") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[DatasetRow]] = {"train": [], "heldout": []}
    for row in rows:
        by_split[split_of(row.group, heldout_fraction)].append(row)
    files: dict[str, FileEntry] = {}
    counts: dict[str, dict[str, int]] = {}
    for split, name in SPLIT_FILES.items():
        data = "".join(
            json.dumps(row.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for row in by_split[split]
        ).encode()
        _write_atomic(out_dir / name, data)
        files[name] = FileEntry(
            sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=len(by_split[split])
        )
        kinds = Counter(row.kind for row in by_split[split])
        counts[split] = {kind: kinds.get(kind, 0) for kind in ("sft", "pair", "kto")}
    versions = Counter(row.adapter_version for row in rows if row.adapter_version)
    manifest = Manifest(
        plugin=plugin,
        source=source,
        created_at=datetime.now(UTC),
        selection=selection,
        split=SplitRule(heldout_fraction=heldout_fraction),
        counts=counts,
        skipped=dict(sorted((skipped or {}).items())),
        adapter_versions=dict(sorted(versions.items())),
        files=files,
        images=dict(sorted(images.items())),
        digest=content_digest(files, images),
    )
    # The manifest goes last: a folder without one is an unfinished write, never mistaken for a dataset.
    _write_atomic(out_dir / MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode())
    return manifest


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(f"not a dataset snapshot (no {MANIFEST_FILE}): {directory}")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise DatasetError(f"{path}: not a {FORMAT} manifest ({exc.error_count()} problems)") from exc


def verify_snapshot(directory: Path, pixels: PixelStore | None) -> Manifest:
    """The manifest, once every file and every referenced image matches its sha256; a
    :class:`DatasetError` listing each mismatch otherwise."""
    manifest = read_manifest(directory)
    problems = []
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (digest := sha256_file(path)) != entry.sha256:
            problems.append(f"{name}: sha256 {digest} differs from the manifest's {entry.sha256}")
    if manifest.images and pixels is None:
        problems.append(f"{len(manifest.images)} images are referenced but no pixel store was given")
    elif manifest.images:
        for key in manifest.images:
            try:
                pixels.get(key, verify=True)
            except PixelStoreError as exc:
                problems.append(f"image {key}: {exc}")
    if content_digest(manifest.files, manifest.images) != manifest.digest:
        problems.append("the manifest's digest does not match its files and images")
    if problems:
        raise DatasetError(f"dataset snapshot {directory} does not verify", problems)
    return manifest


def load_snapshot(directory: Path, pixels: PixelStore | None) -> Snapshot:
    """Verify a snapshot (see :func:`verify_snapshot`), then read its rows for training."""
    manifest = verify_snapshot(directory, pixels)
    snapshot = Snapshot(directory, manifest)
    for split, name in SPLIT_FILES.items():
        rows = getattr(snapshot, split)
        for number, line in enumerate((directory / name).read_text().splitlines(), start=1):
            where = f"{name}:{number}"
            raw = json.loads(line)
            key = raw.pop("image_key", None)
            if key is not None:
                if key not in manifest.images:
                    raise DatasetError(f"{where}: image {key} is not listed in the manifest")
                raw["image"] = str(pixels.path(key))  # type: ignore[union-attr]  # verified above
            rows.append(parse_row(raw, where))
    return snapshot


def snapshot_rows(directory: Path, pixels: PixelStore | None) -> list[DatasetRow]:
    """A verified snapshot's rows as they were written (both splits, with their groups and image keys),
    to be written again into another snapshot (a job's: feedback plus registered datasets)."""
    verify_snapshot(directory, pixels)
    rows = []
    for name in SPLIT_FILES.values():
        for line in (directory / name).read_text().splitlines():
            rows.append(_row_from_json(json.loads(line)))
    return rows


def _row_from_json(raw: dict[str, Any]) -> DatasetRow:
    if "chosen" in raw:
        kind, answer = "pair", raw["chosen"]
    else:
        kind, answer = ("kto" if "desirable" in raw else "sft"), raw["answer"]
    return DatasetRow(
        kind=kind,
        question=raw["question"],
        answer=answer,
        group=raw["group"],
        source=raw["source"],
        rejected=raw.get("rejected"),
        desirable=raw.get("desirable"),
        image_key=raw.get("image_key"),
        adapter_version=raw.get("adapter_version"),
        feedback_id=raw.get("feedback_id"),
        section=raw.get("section"),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
