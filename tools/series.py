"""Reads over a whole series: which slices the model looks at, their pictures, and one draft merged from
the per-slice findings that cites the slices by number.

A "slice" is an instance of a series in anatomical order, or a frame of a multi-frame object; numbers are
1-based positions in that order (what a physician scrolls to), never UIDs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from tools.dicom_io import frame_indices, render_dataset

DEFAULT_READ_SLICES = 8


@dataclass(frozen=True)
class SlicePicture:
    number: int  # 1-based position in the series (or frame of a multi-frame object)
    png: bytes


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # type: ignore[attr-defined]
    return buffer.getvalue()


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def slice_count(ordered: Sequence[Dataset]) -> int:
    """Slices of a study: instances of a series, or frames of its one (multi-frame) object."""
    return frame_count(ordered[0]) if len(ordered) == 1 else len(ordered)


def chosen_slices(total: int, wanted: int) -> list[int]:
    """0-based indices of ``wanted`` slices evenly spaced over ``total``, first and last included."""
    if total <= 1:
        return [0]
    return frame_indices(total, max(2, wanted)) if wanted > 1 else [total // 2]


def slice_pictures(ordered: Sequence[Dataset], wanted: int, middles: Sequence[bytes]) -> list[SlicePicture]:
    """The pictures the model reads: ``wanted`` evenly spaced frames of one multi-frame object, or as
    many instances of a series (``middles``: each instance's picture, already rendered by the intake)."""
    if len(ordered) == 1:
        frames = frame_count(ordered[0])
        if frames == 1:
            return [SlicePicture(1, middles[0])]
        rendered = render_dataset(ordered[0], slices=min(wanted, frames))
        picked = rendered.metadata.selected_slices
        return [SlicePicture(i + 1, _png(image)) for i, image in zip(picked, rendered.images, strict=True)]
    return [SlicePicture(i + 1, middles[i]) for i in chosen_slices(len(ordered), wanted)]


@dataclass(frozen=True)
class SliceFinding:
    number: int
    text: str


def merged_findings(findings: Sequence[SliceFinding], total: int) -> str:
    """One findings section from per-slice findings: identical statements are said once, with every
    slice that gave them, so the physician sees where to look."""
    groups: dict[str, list[int]] = {}
    for item in findings:
        groups.setdefault(item.text.strip() or "(none stated)", []).append(item.number)
    lines = []
    for text, numbers in groups.items():
        label = "Slice" if len(numbers) == 1 else "Slices"
        lines.append(f"- {label} {', '.join(str(n) for n in numbers)} of {total}: {text}")
    return "\n".join(lines)


def series_draft(
    findings: Sequence[SliceFinding], impression: str, impression_slice: int, total: int, confidence: float
) -> str:
    """The draft of a read over several slices (the single-picture draft has the same three parts)."""
    read = ", ".join(str(f.number) for f in findings)
    return (
        f"Findings ({len(findings)} of {total} slices read: {read}):\n"
        f"{merged_findings(findings, total)}\n"
        f"Impression (slice {impression_slice}): {impression.strip() or '(none stated)'}\n"
        f"Confidence (mean token log-probability): {confidence}"
    )
