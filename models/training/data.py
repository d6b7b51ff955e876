"""Training rows, read from JSONL. One object per line, of three shapes:

- supervised: ``{"question", "answer", "image"?}`` — a curated row or a physician's correction;
- preference pair: ``{"question", "chosen", "rejected", "image"?}`` — the correction preferred over the
  AI draft (DPO);
- unpaired feedback: ``{"question", "answer", "desirable": true|false, "image"?}`` — a thumbs up or down
  (KTO-style).

``image`` is a path, relative to the JSONL file unless absolute. Other keys (ids, adapter version, …) are
kept out of training and ignored here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["sft", "pair", "kto"]


@dataclass(frozen=True)
class Row:
    kind: Kind
    question: str
    answer: str  # the supervised answer, the preferred (chosen) answer, or the rated answer
    rejected: str | None = None
    desirable: bool | None = None
    image: Path | None = None
    source: str = ""  # "file:line", for error messages


def _text(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return value


def parse_row(raw: object, where: str, base: Path | None = None) -> Row:
    """One row from its decoded JSON object; ``base`` resolves a relative ``image`` path."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a row must be a JSON object")
    question = _text(raw, "question", where)
    image = None
    if raw.get("image") is not None:
        if not isinstance(raw["image"], str):
            raise ValueError(f"{where}: 'image' must be a path")
        image = Path(raw["image"])
        if base is not None and not image.is_absolute():
            image = base / image
        if not image.is_file():
            raise ValueError(f"{where}: image not found: {image}")
    if "chosen" in raw or "rejected" in raw:
        chosen, rejected = _text(raw, "chosen", where), _text(raw, "rejected", where)
        if chosen == rejected:
            raise ValueError(f"{where}: 'chosen' and 'rejected' are the same text")
        return Row("pair", question, chosen, rejected=rejected, image=image, source=where)
    answer = _text(raw, "answer", where)
    if "desirable" in raw:
        if not isinstance(raw["desirable"], bool):
            raise ValueError(f"{where}: 'desirable' must be true or false")
        return Row("kto", question, answer, desirable=raw["desirable"], image=image, source=where)
    return Row("sft", question, answer, image=image, source=where)


def read_rows(path: Path) -> list[Row]:
    """Every row of a JSONL file (blank lines skipped); a bad line is a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"training data not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        rows.append(parse_row(raw, where, path.parent))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def rows_digest(rows: list[Row]) -> str:
    """sha256 over the rows' content, images included: a checkpoint only resumes the same data."""
    digest = hashlib.sha256()
    for row in rows:
        fields = [row.kind, row.question, row.answer, row.rejected, row.desirable]
        digest.update(json.dumps(fields).encode())
        digest.update(hashlib.sha256(row.image.read_bytes()).digest() if row.image else b"-")
    return digest.hexdigest()
