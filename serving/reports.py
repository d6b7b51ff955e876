"""A read as the report the outside world gets: a FHIR DiagnosticReport (the facade) or the content of the
DICOM SR stored back in the PACS. One mapping for both, so the two never tell different stories. And an
accepted generated image as the words its Secondary Capture carries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from memory.schema import PacsImport, Read, ReadStatus, Study
from tools.fhir import ReadProvenance, ReadReport, Signer, report_sections

# Uploaded studies have no PACS UID; their FHIR ImagingStudy gets a stable UID derived from our id.
_STUDY_UID_NAMESPACE = uuid.UUID("0b5e3c84-9a51-4b8e-8f2b-6a1d4e7c9f21")
_MODALITY_FALLBACK = "OT"  # DICOM "other": a study whose modality the header did not give


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def study_uid_for(study: Study, origin: PacsImport | None) -> str:
    """The study's UID as reports name it: the ORIGINAL one for an imported study (the EHR and the PACS
    know it), a UID derived from our id for an upload (its own UIDs were pseudonymised)."""
    if origin is not None:
        return origin.study_uid
    return f"2.25.{uuid.uuid5(_STUDY_UID_NAMESPACE, f'study:{study.id}').int}"


def _modality(text: str | None) -> str:
    code = (text or "").strip().upper()
    return code if code.replace("_", "").isalnum() and len(code) <= 16 else _MODALITY_FALLBACK


def _model(provenance: dict[str, Any]) -> ReadProvenance:
    return ReadProvenance(
        model=str(provenance.get("model") or "unknown")[:64],
        plugin=str(provenance.get("plugin") or "unknown")[:64],
        adapter_version=str(provenance.get("adapter_version") or "unknown")[:64],
    )


def read_report(read: Read, study: Study, origin: PacsImport | None) -> ReadReport:
    """The read as it stands: the AI draft while preliminary, the signed text once a physician signed."""
    provenance = read.provenance or {}
    signed = read.status is not ReadStatus.preliminary and read.signed_at is not None
    findings, impression = report_sections((read.physician_final if signed else None) or read.ai_draft)
    signer = provenance.get("signed_by") or {}
    return ReadReport(
        study_uid=study_uid_for(study, origin),
        modality=_modality(study.modality),
        body_part=(study.deidentified_metadata or {}).get("body_part") or None,
        patient_reference=f"Patient/{study.patient_id}",
        findings=findings,
        impression=impression,
        provenance=_model(provenance),
        status=str(read.status) if signed else "preliminary",
        signed_by=Signer(id=str(signer.get("user_id") or read.signed_by), name=str(signer.get("name") or "?"))
        if signed
        else None,
        signed_at=_aware(read.signed_at) if signed and read.signed_at else None,
        read_at=_aware(read.created_at),
    )


def pushed_report(payload: dict[str, Any], study_uid: str) -> ReadReport:
    """The signed version an outbox push snapshotted, as the SR's content."""
    findings, impression = report_sections(payload["text"])
    signer = payload["signer"]
    return ReadReport(
        study_uid=study_uid,
        modality=_modality(payload.get("modality")),
        patient_reference=f"Patient/{payload.get('patient_id', 'unknown')}",
        findings=findings,
        impression=impression,
        provenance=_model(payload.get("model") or {}),
        status="amended" if payload.get("replaces") else "final",
        signed_by=Signer(id=str(signer["id"])[:64], name=str(signer["name"])[:128]),
        signed_at=datetime.fromisoformat(payload["signed_at"]),
        read_at=min(datetime.fromisoformat(payload["read_at"]), datetime.fromisoformat(payload["signed_at"])),
    )


# What each image task did to the source, as a Secondary Capture's derivation description says it.
TASK_WORDS = {
    "reconstruction": "Reconstruction",
    "super_resolution": "Super-resolution",
    "ct_to_mri": "CT-to-MRI conversion",
    "mri_to_ct": "MRI-to-CT conversion",
}


@dataclass(frozen=True)
class CaptureWords:
    """The text of an accepted generated image's Secondary Capture."""

    provenance: ReadProvenance
    derivation: str  # "CT-to-MRI conversion of the referenced image (slice 6)"
    description: str  # the series description (64 characters at most)


def pushed_capture(payload: dict[str, Any]) -> CaptureWords:
    """The words of the capture an image push snapshotted: the task, the source slice, the model."""
    task = str(payload.get("task") or "image generation")
    what = TASK_WORDS.get(task, task.replace("_", " "))
    provenance = _model(payload.get("model") or {})
    return CaptureWords(
        provenance=provenance,
        derivation=f"{what} of the referenced image (slice {payload.get('source_slice')})",
        description=f"AI {what.lower()} ({provenance.model})"[:64],
    )
