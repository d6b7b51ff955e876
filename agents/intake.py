"""The one intake of a turn's uploads: DICOM ingest and de-identification, screening of the DICOM text
for prompt injection, picture stripping, and storage in the pixel store and the study records.

It runs before the graph (the caller calls ``take_uploads``, then invokes the graph), so a refused upload
is a plain error before any answer starts to stream. What it returns splits as the graph needs it: the
pixel-store keys and the study id go into the checkpointed state, the model's picture into the turn's
runtime context (agents.context), so image bytes never enter a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from agents.safety import injection_findings
from memory.pixels import PixelStore, PixelStoreError
from memory.records import Records
from tools.images import UnsupportedImage, is_dicom, strip_metadata
from tools.intake import DicomRejected, ingest_dicom


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


@dataclass(frozen=True)
class StoredStudy:
    id: int
    png_key: str  # the de-identified picture the model sees
    png: bytes


@dataclass(frozen=True)
class TurnUploads:
    attachments: list[str] = field(default_factory=list)  # pixel-store keys, for the message and state
    image: bytes | None = None  # the picture the model sees this turn (runtime context only)
    study_id: int | None = None


def take_study(intake: Intake, patient_id: int, upload: Upload) -> StoredStudy:
    """A DICOM upload becomes a de-identified study (header and, per setting, burned-in text)."""
    try:
        study = ingest_dicom(
            upload.data, key=intake.deid_key, burned_in=intake.burned_in, max_bytes=intake.max_bytes
        )
    except DicomRejected as exc:
        raise UploadRejected(exc.reason, f"{upload.name}: {exc}") from exc
    # Instructions hidden in header text are recorded (never the text itself beyond the match), and
    # de-identification has already dropped those fields from what is kept.
    screening = injection_findings("\n".join(study.text_fields))
    try:
        dicom_key = intake.pixels.put(study.deidentified_dicom)
        png_key = intake.pixels.put(study.png)
    except PixelStoreError as exc:  # e.g. a compressed study stored uncompressed after blanking
        raise UploadRejected(
            "too_large", f"{upload.name}: the de-identified study is too large: {exc}"
        ) from exc
    with intake.records() as records:
        row = records.add_study(
            patient_id,
            modality=study.modality,
            description=study.description,
            metadata={
                **study.metadata,
                "dicom_key": dicom_key,
                "deidentification": study.deid_summary,
                "screening": screening,
            },
            pixel_key=png_key,
        )
        return StoredStudy(row.id, png_key, study.png)


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
