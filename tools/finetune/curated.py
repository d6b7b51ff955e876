"""Curated datasets an admin registers: a JSONL file of ``{"question", "answer", "image"?}`` rows.

``image`` is a path relative to the JSONL file (PNG, JPEG, BMP, TIFF, WebP or GIF; DICOM goes through the
study upload, which de-identifies it). An optional ``group`` names the study a row belongs to, so that rows
of one study stay on one side of the split; without it a row's image is its study, and a row without an
image is its own. Nothing else is accepted, so a misspelt key is an error rather than a silently dropped
field. Every problem of the file is reported at once, each with its ``file:line``.

Registration validates the file, stores each picture in the pixel store re-encoded as a PNG of its pixels
only (no EXIF, XMP, ICC or text chunks: they can name a patient or a place) and writes a dataset snapshot
(see :mod:`tools.finetune.dataset`) with ``source: "curated"``.

**The library of registered datasets** (:func:`add_curated`, :func:`list_curated`, :func:`curated_rows`) is
a folder of such snapshots, one per dataset, each with a ``registration.json`` beside its manifest (name,
plugin, who registered it and when). A dataset's id is its plugin and the first hex digits of its content
digest, so registering the same rows twice is refused rather than silently doubling them in a job. A
fine-tune job names datasets by id and trains on their rows besides (or instead of) the feedback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from memory.pixels import PixelStore
from memory.records import MAX_TEXT_CHARS
from tools.finetune.dataset import (
    DEFAULT_HELDOUT_FRACTION,
    DatasetError,
    DatasetRow,
    Manifest,
    group_hash,
    sha256_file,
    snapshot_rows,
    write_snapshot,
)
from tools.images import UnsupportedImage, strip_metadata

ALLOWED_KEYS = ("question", "answer", "image", "group")
MAX_PROBLEMS = 50  # enough to fix a file in one go without flooding the caller
MAX_FILE_BYTES = 1 << 30


@dataclass(frozen=True)
class CuratedRow:
    question: str
    answer: str
    image: Path | None
    group: str | None
    where: str  # "file:line"


def validate_curated(path: Path, *, confined: bool = False) -> list[CuratedRow]:
    """Every row of a curated JSONL file (blank lines skipped), or a :class:`DatasetError` listing each
    problem found. ``confined``: images must lie in the file's folder (an upload must not name files of
    the server)."""
    if not path.is_file():
        raise DatasetError(f"curated dataset not found: {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DatasetError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    rows: list[CuratedRow] = []
    problems: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    for number, line in enumerate(lines, start=1):
        if len(problems) >= MAX_PROBLEMS:
            problems.append("… more problems not listed")
            break
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        found = _check_row(raw, where, path.parent, confined)
        if isinstance(found, CuratedRow):
            rows.append(found)
        else:
            problems.extend(found)
    if not rows and not problems:
        problems.append(f"{path.name} holds no rows")
    if problems:
        raise DatasetError(f"{path.name} is not a valid curated dataset", problems)
    return rows


def _check_row(raw: object, where: str, base: Path, confined: bool) -> CuratedRow | list[str]:
    if not isinstance(raw, dict):
        return [f"{where}: a row must be a JSON object, not {type(raw).__name__}"]
    problems = []
    unknown = sorted(set(raw) - set(ALLOWED_KEYS))
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a row has {ALLOWED_KEYS}")
    texts = {}
    for key in ("question", "answer"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}: {key!r} must be a non-empty string")
        elif len(value) > MAX_TEXT_CHARS:
            problems.append(f"{where}: {key!r} is longer than {MAX_TEXT_CHARS} characters")
        else:
            texts[key] = value
    group = raw.get("group")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        problems.append(f"{where}: 'group' must be a non-empty string when given")
    image = None
    if raw.get("image") is not None:
        if not isinstance(raw["image"], str) or not raw["image"].strip():
            problems.append(f"{where}: 'image' must be a path relative to the JSONL file")
        else:
            image = Path(raw["image"]) if Path(raw["image"]).is_absolute() else base / raw["image"]
            if confined and image.resolve().parent != base.resolve():
                problems.append(f"{where}: 'image' must name one of the uploaded files, not a path")
            elif not image.is_file():
                problems.append(f"{where}: image not found: {raw['image']}")
            else:
                try:
                    strip_metadata(image.read_bytes())
                except UnsupportedImage as exc:
                    problems.append(f"{where}: image {raw['image']}: {exc}")
    if problems:
        return problems
    return CuratedRow(texts["question"], texts["answer"], image, group, where)


def register_curated(
    path: Path,
    out_dir: Path,
    pixels: PixelStore,
    plugin: str,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    confined: bool = False,
) -> Manifest:
    """Validate a curated JSONL file and write it as a dataset snapshot in ``out_dir``."""
    curated = validate_curated(path, confined=confined)
    rows = []
    for row in curated:
        key = pixels.put(strip_metadata(row.image.read_bytes())) if row.image is not None else None
        if row.group is not None:
            study = f"curated-group:{row.group}"
        elif key is not None:
            study = f"image:{key}"
        else:
            study = f"curated-row:{row.question}\0{row.answer}"
        rows.append(
            DatasetRow(
                kind="sft",
                question=row.question,
                answer=row.answer,
                group=group_hash(study),
                source="curated",
                image_key=key,
            )
        )
    selection = {"file": path.name, "file_sha256": sha256_file(path), "rows": len(rows)}
    return write_snapshot(
        out_dir,
        rows,
        pixels=pixels,
        plugin=plugin,
        source="curated",
        selection=selection,
        heldout_fraction=heldout_fraction,
    )


# -- the library of registered datasets -----------------------------------------------------------------
REGISTRATION_FILE = "registration.json"
_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,120}$")  # never "." or "..": ids name folders
_PLUGIN = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
ID_DIGITS = 12  # 48 bits of the content digest: unique among any plausible number of datasets


class DatasetExists(DatasetError):
    """The same rows are registered already for the plugin (under ``dataset_id``)."""

    def __init__(self, dataset_id: str) -> None:
        self.dataset_id = dataset_id
        super().__init__(f"these rows are registered already as dataset {dataset_id}")


class UnknownDataset(DatasetError):
    """No registered dataset has this id."""


class CuratedDataset(BaseModel):
    """A registered curated dataset, as listed: what it holds and who registered it."""

    id: str
    name: str
    plugin: str
    file: str
    file_sha256: str
    rows: int
    counts: dict[str, dict[str, int]]
    images: int
    digest: str
    registered_by: str
    registered_at: datetime


def add_curated(
    library: Path,
    path: Path,
    pixels: PixelStore,
    plugin: str,
    *,
    registered_by: str,
    name: str | None = None,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    confined: bool = False,
) -> CuratedDataset:
    """Validate ``path`` and register it in ``library`` (a folder of datasets) for ``plugin``.

    Raises :class:`DatasetError` listing every bad row, or :class:`DatasetExists` for rows registered
    already. The dataset appears in the library only once complete (written aside, then renamed)."""
    if not _PLUGIN.match(plugin):
        raise DatasetError(f"plugin {plugin!r} is not a plugin name (letters, digits, _ . -)")
    library.mkdir(parents=True, exist_ok=True)
    staging = library / f".partial-{uuid.uuid4().hex}"
    try:
        manifest = register_curated(
            path, staging, pixels, plugin, heldout_fraction=heldout_fraction, confined=confined
        )
        entry = CuratedDataset(
            id=f"{plugin}-{manifest.digest[:ID_DIGITS]}",
            name=(name or path.stem).strip()[:200] or path.stem,
            plugin=plugin,
            file=path.name,
            file_sha256=manifest.selection["file_sha256"],
            rows=manifest.selection["rows"],
            counts=manifest.counts,
            images=len(manifest.images),
            digest=manifest.digest,
            registered_by=registered_by,
            registered_at=datetime.now(UTC),
        )
        (staging / REGISTRATION_FILE).write_text(entry.model_dump_json(indent=2) + "\n")
        home = library / entry.id
        if home.exists():
            raise DatasetExists(entry.id)
        os.replace(staging, home)
        return entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def list_curated(library: Path, plugin: str | None = None) -> list[CuratedDataset]:
    """Registered datasets, oldest first; unreadable folders are left out (never an error)."""
    found = []
    if library.is_dir():
        for folder in library.iterdir():
            if folder.name.startswith("."):
                continue  # an unfinished registration
            entry = _read_entry(folder)
            if entry is not None and (plugin is None or entry.plugin == plugin):
                found.append(entry)
    return sorted(found, key=lambda e: (e.registered_at, e.id))


def find_curated(library: Path, dataset_id: str) -> CuratedDataset:
    entry = _read_entry(library / dataset_id) if _ID.match(dataset_id) else None
    if entry is None:
        raise UnknownDataset(f"no registered dataset {dataset_id!r}")
    return entry


def curated_rows(library: Path, dataset_id: str, pixels: PixelStore | None) -> list[DatasetRow]:
    """A registered dataset's rows (both splits), verified against its manifest."""
    find_curated(library, dataset_id)
    return snapshot_rows(library / dataset_id, pixels)


def _read_entry(folder: Path) -> CuratedDataset | None:
    try:
        return CuratedDataset.model_validate_json((folder / REGISTRATION_FILE).read_bytes())
    except (OSError, ValidationError):
        return None
