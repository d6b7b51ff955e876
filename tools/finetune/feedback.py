"""Training rows from feedback: physicians' corrections and people's ratings.

- A physician's correction of a read becomes, per section of the read (findings, impression), a
  supervised row (the study's de-identified picture, the question the read asked, the corrected text) and
  a preference pair (the correction chosen over the AI draft). A read's latest signed text is used, so an
  amendment supersedes the first correction; a read corrected twice still yields one set of rows.
- A physician's correction of an answer in a consultation: the same, with the question it answered.
  Corrections by patients are not clinical ground truth and are left out (counted as skipped).
- A rating becomes an unpaired row: ``stars`` 4–5 (or ``thumbs: "up"``) desirable, 1–2 (or ``"down"``)
  undesirable; 3 stars is the middle of the scale, says neither, and is skipped.

Every row keeps the adapter version that produced the output the feedback is about.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from memory.pixels import PixelStore
from memory.records import Records, TrainingFeedback
from tools.finetune.dataset import (
    DEFAULT_HELDOUT_FRACTION,
    DatasetRow,
    Manifest,
    group_hash,
    write_snapshot,
)
from tools.reads import READ_QUESTIONS

DESIRABLE_STARS = 4  # at or above: desirable
UNDESIRABLE_STARS = 2  # at or below: undesirable; 3 is neutral and skipped

_SECTION = re.compile(r"^\s*(findings|impression)\s*:\s*(.*)$", re.IGNORECASE)
# Lines the agent appends to a draft that are not the model's words.
_NOT_MODEL_TEXT = re.compile(r"^\s*(confidence\b.*|image quality\s*:.*)$", re.IGNORECASE)
_NONE_STATED = "(none stated)"


def read_sections(text: str) -> dict[str, str]:
    """A read's text by section: ``Findings:`` and ``Impression:`` lines (continuations included), without
    the confidence and image-quality lines. Text under no heading counts as findings."""
    sections: dict[str, list[str]] = {}
    current = "findings"
    for line in text.splitlines():
        if _NOT_MODEL_TEXT.match(line):
            continue
        heading = _SECTION.match(line)
        if heading:
            current = heading.group(1).lower()
            line = heading.group(2)
        sections.setdefault(current, []).append(line.strip())
    joined = {name: "\n".join(part for part in lines if part).strip() for name, lines in sections.items()}
    return {name: value for name, value in joined.items() if value and value != _NONE_STATED}


def read_question(section: str, modality: str) -> str:
    """The question the second read asked for ``section`` of a study of ``modality``."""
    return READ_QUESTIONS.get(section, READ_QUESTIONS["findings"]).format(modality=modality or "medical")


def rating_desirable(payload: dict) -> bool | None:
    """True / False for a rating that says good / bad; None for a neutral or unreadable one."""
    stars = payload.get("stars")
    if type(stars) is int and 1 <= stars <= 5:
        if stars >= DESIRABLE_STARS:
            return True
        if stars <= UNDESIRABLE_STARS:
            return False
        return None
    thumbs = payload.get("thumbs")
    if thumbs in ("up", "down"):
        return thumbs == "up"
    return None


@dataclass
class Built:
    rows: list[DatasetRow]
    skipped: Counter[str]


def rows_from_feedback(items: Sequence[TrainingFeedback], pixels: PixelStore | None) -> Built:
    """Rows from feedback in the order given; what cannot become a row is counted by reason."""
    built = Built([], Counter())
    # One set of rows per corrected output, from its latest correction (a read's amendment supersedes).
    physicians = {i.feedback_id: i for i in items if i.kind == "correction" and i.author_role == "physician"}
    latest = {(i.read_id, i.message_id): i.feedback_id for i in physicians.values()}
    for item in items:
        image_key = item.pixel_key if item.pixel_key and pixels and pixels.exists(item.pixel_key) else None
        if item.study_id is not None:
            if image_key is None:  # a read without its picture would teach answering blind
                built.skipped["image_missing"] += 1
                continue
            group = group_hash(f"study:{item.study_id}")
        else:
            group = group_hash(f"image:{image_key}" if image_key else f"consultation:{item.consultation_id}")
        if item.feedback_id in physicians and latest[(item.read_id, item.message_id)] != item.feedback_id:
            built.skipped["correction_superseded"] += 1
            continue
        built.rows.extend(_rows_of(item, image_key, group, built.skipped))
    return built


def _rows_of(
    item: TrainingFeedback,
    image_key: str | None,
    group: str,
    skipped: Counter[str],
) -> list[DatasetRow]:
    def row(
        kind: str, question: str, answer: str, source: str, section: str | None, **more: str | bool
    ) -> DatasetRow:
        return DatasetRow(
            kind=kind,
            question=question,
            answer=answer,
            group=group,
            source=source,
            image_key=image_key,
            adapter_version=item.adapter_version or None,
            feedback_id=item.feedback_id,
            section=section,
            **more,
        )

    on_read = item.study_id is not None
    if item.kind == "correction":
        if item.author_role != "physician":
            skipped["correction_not_by_physician"] += 1
            return []
        if on_read:
            final = read_sections(item.final or str(item.payload.get("text") or ""))
            drafted = read_sections(item.output)
            rows = []
            for section, text in final.items():
                question = read_question(section, item.modality)
                rows.append(row("sft", question, text, "read-correction", section))
                draft = drafted.get(section)
                if draft and draft != text:
                    rows.append(row("pair", question, text, "read-correction", section, rejected=draft))
            if not rows:
                skipped["correction_empty"] += 1
            return rows
        text = str(item.payload.get("text") or "").strip()
        if not item.question or not text:
            skipped["correction_without_question_or_text"] += 1
            return []
        rows = [row("sft", item.question, text, "message-correction", None)]
        if text != item.output.strip():
            rows.append(row("pair", item.question, text, "message-correction", None, rejected=item.output))
        return rows
    desirable = rating_desirable(item.payload)
    if desirable is None:
        skipped["rating_neutral_or_unreadable"] += 1
        return []
    if on_read:
        return [
            row(
                "kto",
                read_question(section, item.modality),
                text,
                "read-rating",
                section,
                desirable=desirable,
            )
            for section, text in read_sections(item.output).items()
        ]
    if not item.question or not item.output.strip():
        skipped["rating_without_question"] += 1
        return []
    return [row("kto", item.question, item.output, "message-rating", None, desirable=desirable)]


@dataclass
class Selected:
    """The rows a dataset from feedback (and curated sets) would hold, before they are split and written."""

    rows: list[DatasetRow]
    skipped: Counter[str]
    selection: dict[str, Any]  # what was asked for, as the manifest records it


def select_rows(
    records: Records,
    plugin: str,
    pixels: PixelStore | None,
    *,
    since_version: str | None = None,
    since: datetime | None = None,
    curated: Mapping[str, Sequence[DatasetRow]] | None = None,
    feedback: bool = True,
) -> Selected:
    """Feedback on ``plugin`` since a version (the champion) and/or a date as rows, followed by the rows
    of the registered ``curated`` datasets (id -> rows); with ``feedback=False`` the curated rows alone.
    ``records`` must act for an admin (the listing is audited)."""
    curated = dict(curated or {})
    if not feedback and not curated:
        raise ValueError("a dataset without feedback needs at least one curated dataset")
    items = records.training_feedback(plugin, since_version=since_version, since=since) if feedback else []
    built = rows_from_feedback(items, pixels)
    selection = {
        "feedback": len(items) if feedback else None,
        "since_version": since_version,
        "since": since.isoformat() if since else None,
        "first_feedback_id": items[0].feedback_id if items else None,
        "last_feedback_id": items[-1].feedback_id if items else None,
        "curated": {dataset_id: len(rows) for dataset_id, rows in curated.items()},
    }
    rows = built.rows + [row for dataset in curated.values() for row in dataset]
    return Selected(rows, built.skipped, selection)


def snapshot_from_records(
    records: Records,
    plugin: str,
    out_dir: Path,
    pixels: PixelStore | None,
    *,
    since_version: str | None = None,
    since: datetime | None = None,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    curated: Mapping[str, Sequence[DatasetRow]] | None = None,
    feedback: bool = True,
) -> Manifest:
    """The rows of :func:`select_rows`, written as a dataset snapshot in ``out_dir``."""
    selected = select_rows(
        records, plugin, pixels, since_version=since_version, since=since, curated=curated, feedback=feedback
    )
    return write_snapshot(
        out_dir,
        selected.rows,
        pixels=pixels,
        plugin=plugin,
        source="feedback" if feedback else "curated",
        selection=selected.selection,
        heldout_fraction=heldout_fraction,
        skipped=dict(selected.skipped),
    )
