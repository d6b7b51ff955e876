"""Curated datasets an admin registers: a JSONL file of ``{"question", "answer", "image"?}`` rows.

``image`` is a path relative to the JSONL file (PNG, JPEG, BMP, TIFF, WebP or GIF; DICOM goes through the
study upload, which de-identifies it). An optional ``group`` names the study a row belongs to, so that rows
of one study stay on one side of the split; without it a row's image is its study, and a row without an
image is its own. Nothing else is accepted, so a misspelt key is an error rather than a silently dropped
field. Every problem of the file is reported at once, each with its ``file:line``.

Registration validates the file, stores each picture in the pixel store re-encoded as a PNG of its pixels
only (no EXIF, XMP, ICC or text chunks: they can name a patient or a place) and writes a dataset snapshot
(see :mod:`tools.finetune.dataset`) with ``source: "curated"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from memory.pixels import PixelStore
from memory.records import MAX_TEXT_CHARS
from tools.finetune.dataset import (
    DEFAULT_HELDOUT_FRACTION,
    DatasetError,
    DatasetRow,
    Manifest,
    group_hash,
    sha256_file,
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


def validate_curated(path: Path) -> list[CuratedRow]:
    """Every row of a curated JSONL file (blank lines skipped), or a :class:`DatasetError` listing each
    problem found."""
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
        found = _check_row(raw, where, path.parent)
        if isinstance(found, CuratedRow):
            rows.append(found)
        else:
            problems.extend(found)
    if not rows and not problems:
        problems.append(f"{path.name} holds no rows")
    if problems:
        raise DatasetError(f"{path.name} is not a valid curated dataset", problems)
    return rows


def _check_row(raw: object, where: str, base: Path) -> CuratedRow | list[str]:
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
            if not image.is_file():
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
) -> Manifest:
    """Validate a curated JSONL file and write it as a dataset snapshot in ``out_dir``."""
    curated = validate_curated(path)
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
