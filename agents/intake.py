"""The one intake of a turn's uploads: DICOM ingest and de-identification, screening of the DICOM text
for prompt injection, picture stripping, and storage in the pixel store and the study records.

It runs before the graph (the caller calls ``take_uploads``, then invokes the graph), so a refused upload
is a plain error before any answer starts to stream. What it returns splits as the graph needs it: the
pixel-store keys and the study id go into the checkpointed state, the model's picture into the turn's
runtime context (agents.context), so image bytes never enter a checkpoint.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset

from agents.safety import injection_findings
from memory.pixels import PixelStore, PixelStoreError
from memory.records import Records
from memory.schema import Study, StudySource
from tools.dicom_io import read_dataset, slice_order
from tools.images import UnsupportedImage, is_dicom, strip_metadata
from tools.intake import DicomRejected, IngestedStudy, ingest_dicom
from tools.series import DEFAULT_READ_SLICES, slice_count, slice_pictures


@dataclass
class Upload:
    name: str
    data: bytes


class UploadRejected(ValueError):
    """An upload the intake refuses. ``reason`` is a short code: those of tools.intake.DicomRejected
    (``too_large``, ``not_dicom``, ``unreadable``, ``unsupported``, …), ``unsupported`` for a picture
    that cannot be decoded, ``needs_patient`` for a DICOM study outside a patient's consultation."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Intake:
    """Where uploads go and how DICOM is de-identified (one per caller: records carry their access)."""

    pixels: PixelStore
    records: Callable[[], AbstractContextManager[Records]]
    deid_key: bytes  # the same key keeps pseudonyms consistent across uploads
    burned_in: str = "refuse"  # burned-in text: refuse the study, or blank it
    max_bytes: int = 512 * 1024 * 1024
    read_slices: int = DEFAULT_READ_SLICES  # slices of a series (frames of one object) a read looks at


@dataclass(frozen=True)
class StoredStudy:
    id: int
    png_key: str  # the de-identified picture the model sees
    png: bytes
    order: list[int] = field(default_factory=lambda: [0])  # positions of the files, in slice order


# Called inside the transaction that adds the study, so what it writes (e.g. where an imported study came
# from) commits with the study or not at all.
StudyLink = Callable[[Records, Study, list[int]], None]


@dataclass(frozen=True)
class TurnUploads:
    attachments: list[str] = field(default_factory=list)  # pixel-store keys, for the message and state
    image: bytes | None = None  # the picture the model sees this turn (runtime context only)
    study_id: int | None = None


def take_study(intake: Intake, patient_id: int, upload: Upload) -> StoredStudy:
    """A DICOM upload becomes a de-identified study (header and, per setting, burned-in text)."""
    return take_series(intake, patient_id, [upload])


def _ingest(intake: Intake, upload: Upload) -> IngestedStudy:
    try:
        return ingest_dicom(
            upload.data, key=intake.deid_key, burned_in=intake.burned_in, max_bytes=intake.max_bytes
        )
    except DicomRejected as exc:
        raise UploadRejected(exc.reason, f"{upload.name}: {exc}") from exc


def _put(intake: Intake, data: bytes, name: str) -> str:
    try:
        return intake.pixels.put(data)
    except PixelStoreError as exc:  # e.g. a compressed study stored uncompressed after blanking
        raise UploadRejected("too_large", f"{name}: the de-identified study is too large: {exc}") from exc


def _headers(study: IngestedStudy) -> Dataset:
    # Our own de-identified output, already read once in full: the header is enough to order slices.
    return dcmread(io.BytesIO(study.deidentified_dicom), stop_before_pixels=True)


def _in_slice_order(studies: list[IngestedStudy]) -> list[int]:
    """Positions of the files in anatomical order, read from their de-identified headers."""
    if len(studies) == 1:
        return [0]
    headers = [_headers(s) for s in studies]
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in headers}
    if len(series) > 1:
        raise UploadRejected("mixed_series", f"the files belong to {len(series)} different series")
    return slice_order(headers)


def take_series(
    intake: Intake,
    patient_id: int,
    uploads: list[Upload],
    *,
    source: StudySource = StudySource.upload,
    link: StudyLink | None = None,
) -> StoredStudy:
    """The files of one series (or one file) become one de-identified study: every file through the same
    ingest as an upload, kept in slice order, with the middle one as the study's picture and
    ``intake.read_slices`` evenly spaced slices (frames of a multi-frame object) rendered for a read.
    Nothing is recorded unless every file is taken."""
    if not uploads:
        raise UploadRejected("not_dicom", "a study needs at least one DICOM file")
    studies = [_ingest(intake, upload) for upload in uploads]
    order = _in_slice_order(studies)
    middle = studies[order[len(order) // 2]]
    # Instructions hidden in header text are recorded (never the text itself beyond the match), and
    # de-identification has already dropped those fields from what is kept.
    text = dict.fromkeys(line for s in studies for line in s.text_fields)
    screening = injection_findings("\n".join(text))
    names = [uploads[i].name for i in order]
    keys = [_put(intake, studies[i].deidentified_dicom, name) for i, name in zip(order, names, strict=True)]
    png_key = _put(intake, middle.png, uploads[order[len(order) // 2]].name)
    metadata = {
        **middle.metadata,
        "dicom_key": keys[len(keys) // 2],
        "deidentification": middle.deid_summary,
        "screening": screening,
    }
    # One file: parsed in full (its frames may be the slices); a series: its instances are.
    ordered = (
        [read_dataset(middle.deidentified_dicom, intake.max_bytes)]
        if len(studies) == 1
        else [_headers(studies[i]) for i in order]
    )
    total = slice_count(ordered)
    if total > 1:  # a series or a multi-frame object: the slices a read looks at, by number
        pictures = slice_pictures(ordered, intake.read_slices, [studies[i].png for i in order])
        metadata["slice_count"] = total
        metadata["series_keys"] = keys
        metadata["read_slices"] = [{"slice": p.number, "key": _put(intake, p.png, "slice")} for p in pictures]
    with intake.records() as records:
        row = records.add_study(
            patient_id,
            modality=middle.modality,
            description=middle.description,
            metadata=metadata,
            pixel_key=png_key,
            source=source,
        )
        if link is not None:
            link(records, row, order)
        return StoredStudy(row.id, png_key, middle.png, order)


def take_uploads(
    intake: Intake, patient_id: int | None, uploads: list[Upload], study_id: int | None = None
) -> TurnUploads:
    """Pictures into the pixel store, DICOM into studies; the model sees the first upload's picture, or
    else the picture of the study the turn names."""
    attachments: list[str] = []
    image: bytes | None = None
    for upload in uploads:
        if is_dicom(upload.data):
            if patient_id is None:
                raise UploadRejected(
                    "needs_patient", "a DICOM study belongs to a patient: use a patient consultation"
                )
            study = take_study(intake, patient_id, upload)
            study_id = study.id
            attachments.append(study.png_key)
            image = image or study.png
        else:
            key, png = _store_picture(intake, upload.data)
            attachments.append(key)
            image = image or png
    if image is None and study_id is not None:
        with intake.records() as records:
            key = records.get_study(study_id).pixel_key
        image = intake.pixels.get(key) if key else None
    return TurnUploads(attachments, image, study_id)


def _store_picture(intake: Intake, data: bytes) -> tuple[str, bytes]:
    """Keep only the pixels of an uploaded picture, upright (PNG: EXIF, XMP, ICC, comments gone)."""
    try:
        png = strip_metadata(data)
    except UnsupportedImage as exc:
        raise UploadRejected("unsupported", f"image: {exc}") from exc
    return intake.pixels.put(png), png
