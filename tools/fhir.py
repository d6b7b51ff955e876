"""FHIR reports of an image read: a Bundle with DiagnosticReport, ImagingStudy, Observation, Device,
Practitioner and Provenance, built and checked with ``fhir.resources``.

FHIR version: ``fhir.resources`` 8 ships R5 (top level), R4B and STU3 — no pure R4. We use R4B: its
DiagnosticReport, ImagingStudy, Observation, Device, Practitioner and Provenance are the R4 ones, so
the JSON is what an R4 server expects.

How the read is recorded:

* ``DiagnosticReport``: ``preliminary`` while only the AI has read the study; ``final`` once a physician
  signs, ``amended`` when a signed report is signed again. ``conclusion`` carries the impression,
  ``presentedForm`` the whole text, ``result`` the findings Observation.
* The AI is a ``Device`` (model name; versions: model, H-LoRA plugin, adapter). FHIR R4 does *not* allow a
  Device as ``DiagnosticReport.performer`` (only Practitioner, PractitionerRole, Organization, CareTeam),
  so a preliminary report has no performer; the AI appears where R4 allows a Device: the findings
  ``Observation.device`` and the ``Provenance`` agent (``author``). After sign-off the Practitioner is
  ``performer`` and ``resultsInterpreter`` of the report, ``performer`` of the Observation and the
  Provenance ``verifier``. The Device is a Bundle entry, not contained: the Provenance must reference it.
* Model confidence is an Observation component (a 0–1 quantity); the report and the Observation carry the
  ``AIAST`` security label (HL7: "Artificial Intelligence asserted").
* Ids are UUIDv5 of the study, the read time and the role, so a read and its signed version share the
  DiagnosticReport and Observation ids (the same resource changes status), while each status has its
  own Provenance.

:func:`validate_bundle` serializes to JSON, parses back with the library's models, compares, and checks
every reference against the target types the R4 element allows.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fhir.resources.R4B.bundle import Bundle
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

FHIR_VERSION = "4.3.0"  # R4B; see the module docstring

LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service sections
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
UCUM = "http://unitsofmeasure.org"
SIGNER_ID_SYSTEM = "urn:healthagent:user"  # our user ids, the identifier of a signing Practitioner

# Fixed namespace, so ids are stable across processes and hosts.
_ID_NAMESPACE = uuid.UUID("6f1d8a52-3c1e-5b7a-9a43-2d0f5e8c9b10")

DicomUid = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$", max_length=64)]
ReportStatus = Literal["preliminary", "final", "amended"]


class FhirValidationError(ValueError):
    """A built resource does not survive the JSON round trip or breaks an R4 rule we check."""


class ReadProvenance(BaseModel):
    """Which model produced the read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, max_length=64, description="model name, e.g. HealthGPT-M3")
    plugin: str = Field(min_length=1, max_length=64, description="H-LoRA plugin, e.g. comprehension")
    adapter_version: str = Field(min_length=1, max_length=64)


class Signer(BaseModel):
    """The physician who signs the report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=128)


class ReadReport(BaseModel):
    """One read of one imaging study: what the AI found, and who (if anyone) signed it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: DicomUid
    modality: str = Field(pattern=r"^[A-Z0-9_]{1,16}$", description="DICOM modality code, e.g. CT, MR")
    body_part: str | None = Field(default=None, max_length=64)
    # A pseudonym: the report never carries the patient's identity, only a reference the EHR resolves.
    patient_reference: str = Field(pattern=r"^Patient/[A-Za-z0-9\-.]{1,64}$")
    findings: str = Field(min_length=1)
    impression: str = Field(min_length=1)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    provenance: ReadProvenance
    status: ReportStatus = "preliminary"
    signed_by: Signer | None = None
    signed_at: AwareDatetime | None = None
    read_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    # Where a server serves the DiagnosticReport (the FHIR facade: ``{base}/DiagnosticReport/{read id}``):
    # its id is the last segment and its fullUrl this. None: an id derived from the study and read time.
    report_url: str | None = Field(
        default=None, pattern=r"^https?://\S+/DiagnosticReport/[A-Za-z0-9\-.]{1,64}$"
    )

    @model_validator(mode="after")
    def _signature_matches_status(self) -> ReadReport:
        signed = self.signed_by is not None or self.signed_at is not None
        if self.status == "preliminary" and signed:
            raise ValueError("a preliminary read is unsigned: drop signed_by/signed_at or set the status")
        if self.status != "preliminary" and (self.signed_by is None or self.signed_at is None):
            raise ValueError(f"a {self.status} report needs signed_by and signed_at")
        if self.signed_at is not None and self.signed_at < self.read_at:
            raise ValueError("signed_at is before read_at")
        return self

    def sign(self, by: Signer, at: datetime | None = None, **changes: Any) -> ReadReport:
        """The signed report: ``final`` the first time, ``amended`` after; ``changes`` edit the text."""
        data = self.model_dump() | changes
        data |= {
            "status": "final" if self.status == "preliminary" else "amended",
            "signed_by": by,
            "signed_at": at or datetime.now(UTC),
        }
        return ReadReport.model_validate(data)


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, "|".join(parts)))


def _urn(resource_id: str) -> str:
    return f"urn:uuid:{resource_id}"


def _url(ids: dict[str, str], role: str) -> str:
    """How the Bundle names a resource: its server URL where it has one, else its urn:uuid."""
    return ids.get(f"{role}_url") or _urn(ids[role])


_ROLES = {"DiagnosticReport": "report", "ImagingStudy": "study", "Observation": "observation",
          "Device": "device", "Practitioner": "practitioner", "Provenance": "provenance"}  # fmt: skip


def _role(resource: dict[str, Any]) -> str:
    return _ROLES[resource["resourceType"]]


def _ai_label() -> dict[str, Any]:
    return {"security": [{"system": V3_OBSERVATION_VALUE, "code": "AIAST"}]}


def _device(p: ReadProvenance, device_id: str) -> dict[str, Any]:
    versions = (("model", p.model), ("H-LoRA plugin", p.plugin), ("adapter", p.adapter_version))
    return {
        "resourceType": "Device",
        "id": device_id,
        "status": "active",
        "deviceName": [{"name": p.model, "type": "model-name"}],
        "type": {"text": "AI medical vision-language model"},
        "version": [{"type": {"text": kind}, "value": value} for kind, value in versions],
    }


def _practitioner(signer: Signer, practitioner_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": practitioner_id,
        "identifier": [{"system": SIGNER_ID_SYSTEM, "value": signer.id}],
        "name": [{"text": signer.name}],
    }


def _imaging_study(read: ReadReport, study_id: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": study_id,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{read.study_uid}"}],
        "subject": {"reference": read.patient_reference},
        "modality": [{"system": DCM, "code": read.modality}],
    }


def _findings(read: ReadReport, ids: dict[str, str]) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": ids["observation"],
        "meta": _ai_label(),
        "status": read.status,
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": "18782-3", "display": "Radiology Study observation"}],
            "text": "Findings",
        },
        "subject": {"reference": read.patient_reference},
        "issued": (read.signed_at or read.read_at).isoformat(),
        "valueString": read.findings,
        "device": {"reference": _urn(ids["device"])},
        "derivedFrom": [{"reference": _urn(ids["study"])}],
    }
    if read.body_part:
        observation["bodySite"] = {"text": read.body_part}
    if read.confidence is not None:
        observation["component"] = [
            {
                "code": {"text": "model confidence"},
                "valueQuantity": {"value": read.confidence, "system": UCUM, "code": "1"},
            }
        ]
    if read.signed_by is not None:
        observation["performer"] = [{"reference": _urn(ids["practitioner"])}]
    return observation


def _report_text(read: ReadReport) -> str:
    lines = [f"{read.modality} study {read.study_uid}"]
    if read.body_part:
        lines.append(f"Body part: {read.body_part}")
    lines += ["", "FINDINGS:", read.findings, "", "IMPRESSION:", read.impression, ""]
    if read.signed_by is not None and read.signed_at is not None:
        lines.append(f"Signed by {read.signed_by.name} at {read.signed_at.isoformat()} ({read.status}).")
    else:
        lines.append(
            f"PRELIMINARY: generated by {read.provenance.model} ({read.provenance.plugin}, "
            f"adapter {read.provenance.adapter_version}); not reviewed by a physician."
        )
    return "\n".join(lines)


def _diagnostic_report(read: ReadReport, ids: dict[str, str]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": ids["report"],
        "meta": _ai_label(),
        "status": read.status,
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": f"{read.modality} imaging report",
        },
        "subject": {"reference": read.patient_reference},
        "issued": (read.signed_at or read.read_at).isoformat(),
        "result": [{"reference": _urn(ids["observation"])}],
        "imagingStudy": [{"reference": _urn(ids["study"])}],
        "conclusion": read.impression,
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "title": "Imaging report",
                "data": base64.b64encode(_report_text(read).encode()).decode(),
            }
        ],
    }
    if read.signed_by is not None:
        signer = [{"reference": _urn(ids["practitioner"]), "display": read.signed_by.name}]
        report["performer"] = signer
        report["resultsInterpreter"] = signer
    return report


def _provenance(read: ReadReport, ids: dict[str, str]) -> dict[str, Any]:
    signed = read.signed_by is not None
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
            "who": {"reference": _urn(ids["device"]), "display": read.provenance.model},
        }
    ]
    if signed:
        agents.append(
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "verifier"}]},
                "who": {"reference": _urn(ids["practitioner"])},
            }
        )
    operation, text = ("UPDATE", f"physician sign-off ({read.status})") if signed else ("CREATE", "AI read")
    return {
        "resourceType": "Provenance",
        "id": ids["provenance"],
        "target": [{"reference": _url(ids, "report")}, {"reference": _urn(ids["observation"])}],
        "occurredDateTime": read.read_at.isoformat(),
        "recorded": (read.signed_at or read.read_at).isoformat(),
        "activity": {"coding": [{"system": V3_DATA_OPERATION, "code": operation}], "text": text},
        "agent": agents,
        "entity": [{"role": "source", "what": {"reference": _urn(ids["study"])}}],
    }


def build_report_bundle(read: ReadReport) -> Bundle:
    """The read as a FHIR R4 ``collection`` Bundle (see the module docstring for the layout)."""
    key = (read.study_uid, read.read_at.isoformat())
    p = read.provenance
    ids = {
        "report": read.report_url.rsplit("/", 1)[1] if read.report_url else _id("report", *key),
        "observation": _id("observation", *key),
        "study": _id("imaging-study", read.study_uid),
        "device": _id("device", p.model, p.plugin, p.adapter_version),
        "provenance": _id("provenance", read.status, *key),
    }
    if read.signed_by is not None:
        ids["practitioner"] = _id("practitioner", read.signed_by.id)
    if read.report_url:
        ids["report_url"] = read.report_url
    resources = [_diagnostic_report(read, ids), _imaging_study(read, ids["study"]), _findings(read, ids)]
    resources.append(_device(p, ids["device"]))
    if read.signed_by is not None:
        resources.append(_practitioner(read.signed_by, ids["practitioner"]))
    resources.append(_provenance(read, ids))
    bundle = {
        "resourceType": "Bundle",
        "id": _id("bundle", read.status, *key),
        "type": "collection",
        "timestamp": (read.signed_at or read.read_at).isoformat(),
        "entry": [{"fullUrl": _url(ids, _role(r)), "resource": r} for r in resources],
    }
    try:
        return Bundle.model_validate(bundle)
    except ValidationError as exc:  # a bug here, not bad input: ReadReport was validated
        raise FhirValidationError(f"built an invalid Bundle: {exc}") from exc


def to_json(bundle: Bundle) -> str:
    return bundle.model_dump_json()


def parse_bundle(text: str | bytes) -> Bundle:
    """Parse FHIR JSON into a Bundle, or raise :class:`FhirValidationError`."""
    try:
        return Bundle.model_validate_json(text)
    except ValidationError as exc:
        raise FhirValidationError(f"not a valid FHIR R4 Bundle: {exc}") from exc


# "Patient/abc", "https://ehr.example/fhir/Patient/abc/_history/2": the type is the segment before the id.
_LITERAL_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


def _reference_problems(
    model: FHIRAbstractModel, by_url: dict[str, str], path: str, problems: list[str]
) -> None:
    """Walk ``model``; record references that do not resolve or point at a type R4 forbids there."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name, None)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        allowed = extra.get("enum_reference_types")
        for index, item in enumerate(items):
            where = f"{path}.{name}[{index}]" if isinstance(value, list) else f"{path}.{name}"
            if not isinstance(item, FHIRAbstractModel):
                continue
            reference = getattr(item, "reference", None) if allowed else None
            if reference:
                match = _LITERAL_REFERENCE.search(reference)
                target = by_url.get(reference) or (match.group(1) if match else None)
                if target is None:
                    problems.append(f"{where}: {reference!r} does not resolve")
                elif "Resource" not in allowed and target not in allowed:
                    problems.append(f"{where}: a {target} is not allowed here (only {', '.join(allowed)})")
            _reference_problems(item, by_url, where, problems)


def validate_bundle(bundle: Bundle) -> Bundle:
    """Round-trip ``bundle`` through JSON and check its references; return the parsed copy."""
    text = to_json(bundle)
    parsed = parse_bundle(text)
    if json.loads(to_json(parsed)) != json.loads(text):
        raise FhirValidationError("the Bundle changes when serialized and parsed back")
    by_url = {
        entry.fullUrl: entry.resource.get_resource_type()
        for entry in parsed.entry or []
        if entry.fullUrl and entry.resource is not None
    }
    problems: list[str] = []
    _reference_problems(parsed, by_url, "Bundle", problems)
    if problems:
        raise FhirValidationError("; ".join(problems))
    return parsed


def report_of(bundle: Bundle) -> Any:
    """The DiagnosticReport of a Bundle built here."""
    for entry in bundle.entry or []:
        if entry.resource is not None and entry.resource.get_resource_type() == "DiagnosticReport":
            return entry.resource
    raise FhirValidationError("the Bundle holds no DiagnosticReport")


def search_bundle(bundles: list[Bundle], total: int | None = None) -> Bundle:
    """A ``searchset`` Bundle of several reports: each DiagnosticReport is a match, what it refers to
    (findings, study, the AI Device, the physician, the Provenance) is included once."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for bundle in bundles:
        for entry in bundle.entry or []:
            if entry.resource is None or entry.fullUrl in seen:
                continue
            seen.add(str(entry.fullUrl))
            mode = "match" if entry.resource.get_resource_type() == "DiagnosticReport" else "include"
            entries.append(
                {
                    "fullUrl": entry.fullUrl,
                    "resource": json.loads(entry.resource.model_dump_json()),
                    "search": {"mode": mode},
                }
            )
    matches = sum(1 for e in entries if e["search"]["mode"] == "match")
    searchset = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "timestamp": datetime.now(UTC).isoformat(),
        "total": matches if total is None else total,
        "entry": entries,
    }
    try:
        return Bundle.model_validate(searchset)
    except ValidationError as exc:
        raise FhirValidationError(f"built an invalid searchset Bundle: {exc}") from exc


# "Findings:", "Findings (8 of 120 slices read: 1, 18, …):", "Impression (slice 60):"; the draft's confidence
# and image-quality lines end a section without being one the report carries.
_SECTION = re.compile(
    r"^[ \t]*(findings|impression|confidence|image quality)\b[ \t]*(?:\([^)\n]*\))?[^:\n]*:[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)


def report_sections(text: str) -> tuple[str, str]:
    """(findings, impression) of a report's text: its "Findings:" and "Impression:" parts where it has
    them (the AI draft's layout), else the whole text as findings and a pointer to it as impression."""
    marks = list(_SECTION.finditer(text))
    parts: dict[str, str] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=False):
        end = following.start() if following is not None else len(text)
        parts.setdefault(mark.group(1).lower(), text[mark.end() : end].strip())
    findings = parts.get("findings") or text.strip() or "(none stated)"
    impression = parts.get("impression") or "See findings."
    return findings, impression
