"""DICOM intake: an uploaded study becomes de-identified bytes, an 8-bit picture for the model, and
metadata — in that order, so nothing identifying reaches a model, a log or the database."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from tools.deid import (
    BurnedInAnnotationError,
    DeidError,
    DeidOptions,
    DeidRefused,
    deidentify,
    encode_dicom,
)
from tools.dicom_io import DicomError, load_dicom, read_dataset

# Free-text header fields a study may carry instructions in; screened before de-identification
# removes them (the basic profile drops descriptions), never stored.
SCREENED_TEXT_FIELDS = (
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "PerformedProcedureStepDescription",
    "RequestedProcedureDescription",
    "AdditionalPatientHistory",
)


# Objects that carry pixel data but are derived from images, not pictures of the patient: a read of them
# would describe a label map or a dose grid as anatomy. Keyed by SOP Class UID (PS3.4 B.5).
DERIVED_OBJECTS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation is a label map drawn over another image",
    "1.2.840.10008.5.1.4.1.1.66.7": "a Label Map Segmentation is drawn over another image",
    "1.2.840.10008.5.1.4.1.1.30": "a Parametric Map holds values computed from other images",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose is a planned radiation dose grid",
}


def derived_object(sop_class_uid: str) -> str | None:
    """Why an object of this SOP class is not an image to read, or None."""
    return DERIVED_OBJECTS.get(sop_class_uid.strip())


class DicomRejected(ValueError):
    """A study that cannot be taken in; ``reason`` is a short code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class IngestedStudy:
    deidentified_dicom: bytes
    png: bytes
    modality: str
    description: str
    metadata: dict[str, Any]
    deid_summary: dict[str, Any]
    text_fields: list[str] = field(default_factory=list)  # raw free text, for screening only


def ingest_dicom(
    data: bytes, *, key: bytes, burned_in: str = "refuse", max_bytes: int = 512 * 1024 * 1024
) -> IngestedStudy:
    try:
        dataset = read_dataset(data, max_bytes)  # size-capped, truncation and deflate-bomb checked
    except DicomError as exc:
        raise DicomRejected(exc.reason, str(exc)) from exc
    meta = getattr(dataset, "file_meta", None)
    stored_as = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    why = derived_object(str(dataset.get("SOPClassUID") or stored_as or ""))
    if why is not None:
        raise DicomRejected(
            "derived_object", f"{why}, not an image to read; upload the images it was made from"
        )
    text_fields = [str(dataset.get(name, "")) for name in SCREENED_TEXT_FIELDS if dataset.get(name)]
    try:
        result = deidentify(dataset, key=key, options=DeidOptions(burned_in=burned_in))
    except BurnedInAnnotationError as exc:
        raise DicomRejected("burned_in", str(exc)) from exc
    except DeidRefused as exc:
        raise DicomRejected("unsupported", str(exc)) from exc
    except DeidError as exc:  # a damaged element the de-identifier could not handle: the file's fault
        raise DicomRejected("invalid_header", str(exc)) from exc
    try:
        clean = encode_dicom(result.dataset)
    except DeidError as exc:  # EncodeError: a value that reads but cannot be written back
        raise DicomRejected("invalid_header", str(exc)) from exc
    try:
        # The picture comes from the de-identified file: blanked bands stay blank for the model.
        decoded = load_dicom(clean)
    except DicomError as exc:
        raise DicomRejected(getattr(exc, "reason", "unsupported"), str(exc)) from exc
    buffer = io.BytesIO()
    decoded.images[0].save(buffer, format="PNG")
    metadata = decoded.metadata.model_dump(mode="json")
    return IngestedStudy(
        deidentified_dicom=clean,
        png=buffer.getvalue(),
        modality=str(metadata.get("modality") or "")[:16],
        description=str(metadata.get("study_description") or "")[:400],
        metadata=metadata,
        deid_summary=result.report.model_dump(mode="json"),
        text_fields=text_fields,
    )
