"""FHIR R4 reports: the preliminary AI read, its sign-off, and the checks of validate_bundle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from tools.fhir import (
    FhirValidationError,
    ReadProvenance,
    ReadReport,
    Signer,
    build_report_bundle,
    parse_bundle,
    report_of,
    to_json,
    validate_bundle,
)

READ_AT = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
PROVENANCE = ReadProvenance(model="HealthGPT-M3", plugin="comprehension", adapter_version="2025.02-r1")
DOCTOR = Signer(id="u-42", name="Dr. Ada Müller")


def _read(**changes) -> ReadReport:
    fields = {
        "study_uid": "1.2.826.0.1.3680043.8.498.1",
        "modality": "CT",
        "body_part": "chest",
        "patient_reference": "Patient/pseudo-7f3a",
        "findings": "Kein Rundherd. 右肺正常.",
        "impression": "No acute cardiopulmonary finding.",
        "confidence": 0.83,
        "provenance": PROVENANCE,
        "read_at": READ_AT,
    }
    return ReadReport(**(fields | changes))


def _resources(bundle) -> dict[str, list]:
    found: dict[str, list] = {}
    for entry in bundle.entry:
        found.setdefault(entry.resource.get_resource_type(), []).append(entry.resource)
    return found


def _by_url(bundle) -> dict[str, object]:
    return {entry.fullUrl: entry.resource for entry in bundle.entry}


def test_preliminary_read_names_the_ai_and_no_performer() -> None:
    bundle = validate_bundle(build_report_bundle(_read()))
    resources = _resources(bundle)
    assert sorted(resources) == ["Device", "DiagnosticReport", "ImagingStudy", "Observation", "Provenance"]
    report, urls = resources["DiagnosticReport"][0], _by_url(bundle)

    assert report.status == "preliminary"
    assert report.performer is None and report.resultsInterpreter is None
    assert report.conclusion == "No acute cardiopulmonary finding."
    assert report.subject.reference == "Patient/pseudo-7f3a"
    assert report.meta.security[0].code == "AIAST"
    text = report.presentedForm[0].data.decode()  # the model holds the decoded bytes
    assert "Kein Rundherd. 右肺正常." in text and "PRELIMINARY" in text

    study = urls[report.imagingStudy[0].reference]
    assert study.identifier[0].value == "urn:oid:1.2.826.0.1.3680043.8.498.1"
    assert study.modality[0].code == "CT"

    findings = urls[report.result[0].reference]
    assert findings.status == "preliminary" and findings.valueString == "Kein Rundherd. 右肺正常."
    assert findings.bodySite.text == "chest"
    assert float(findings.component[0].valueQuantity.value) == pytest.approx(0.83)
    device = urls[findings.device.reference]
    assert device.deviceName[0].name == "HealthGPT-M3"
    assert {v.type.text: v.value for v in device.version} == {
        "model": "HealthGPT-M3",
        "H-LoRA plugin": "comprehension",
        "adapter": "2025.02-r1",
    }

    provenance = resources["Provenance"][0]
    assert [urls[t.reference] for t in provenance.target] == [report, findings]
    assert [(a.type.coding[0].code, urls[a.who.reference]) for a in provenance.agent] == [("author", device)]
    assert urls[provenance.entity[0].what.reference] is study


def test_signing_makes_the_practitioner_performer_and_interpreter() -> None:
    preliminary = build_report_bundle(_read())
    signed_read = _read().sign(DOCTOR, at=READ_AT + timedelta(hours=2))
    bundle = validate_bundle(build_report_bundle(signed_read))
    resources, urls = _resources(bundle), _by_url(bundle)
    report = resources["DiagnosticReport"][0]

    assert report.status == "final"
    practitioner = urls[report.performer[0].reference]
    assert practitioner.get_resource_type() == "Practitioner"
    assert urls[report.resultsInterpreter[0].reference] is practitioner
    assert practitioner.identifier[0].value == "u-42" and practitioner.name[0].text == "Dr. Ada Müller"
    assert report.issued == READ_AT + timedelta(hours=2)

    findings = resources["Observation"][0]
    assert findings.status == "final" and urls[findings.performer[0].reference] is practitioner
    agents = {a.type.coding[0].code: urls[a.who.reference] for a in resources["Provenance"][0].agent}
    assert agents["verifier"] is practitioner and agents["author"].get_resource_type() == "Device"

    # The same report resource changes status; each status has its own Provenance.
    assert report.id == report_of(preliminary).id
    assert resources["Provenance"][0].id != _resources(preliminary)["Provenance"][0].id


def test_signing_again_amends_and_edits() -> None:
    final = _read().sign(DOCTOR, at=READ_AT + timedelta(hours=1))
    amended = final.sign(DOCTOR, at=READ_AT + timedelta(days=1), impression="Small left effusion.")
    report = report_of(validate_bundle(build_report_bundle(amended)))
    assert report.status == "amended"
    assert report.conclusion == "Small left effusion."


def test_same_read_builds_the_same_json() -> None:
    assert to_json(build_report_bundle(_read())) == to_json(build_report_bundle(_read()))


def test_report_parses_back_with_the_library_model() -> None:
    bundle = build_report_bundle(_read().sign(DOCTOR, at=READ_AT + timedelta(minutes=5)))
    text = to_json(bundle)
    assert json.loads(to_json(parse_bundle(text))) == json.loads(text)
    report_json = next(
        e["resource"]
        for e in json.loads(text)["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    assert DiagnosticReport.model_validate(report_json).status == "final"


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "final"},  # unsigned final
        {"signed_by": DOCTOR, "signed_at": READ_AT},  # signed but preliminary
        {"status": "final", "signed_by": DOCTOR, "signed_at": READ_AT - timedelta(seconds=1)},
        {"patient_reference": "Patient/John Smith"},  # a name, not a pseudonym
        {"patient_reference": "pseudo-7f3a"},
        {"confidence": 1.5},
        {"study_uid": "1.2.03"},  # leading zero: not a DICOM UID
        {"modality": "ct"},
        {"findings": ""},
        {"read_at": datetime(2025, 3, 1, 9, 30)},  # naive: ambiguous time
    ],
)
def test_invalid_reads_are_rejected(changes: dict) -> None:
    with pytest.raises(ValidationError):
        _read(**changes)


def test_device_as_report_performer_is_refused() -> None:
    # R4 allows no Device in DiagnosticReport.performer: what a naive "AI as performer" would build.
    data = json.loads(to_json(build_report_bundle(_read())))
    device_url = next(e["fullUrl"] for e in data["entry"] if e["resource"]["resourceType"] == "Device")
    data["entry"][0]["resource"]["performer"] = [{"reference": device_url}]
    with pytest.raises(FhirValidationError, match="Device is not allowed"):
        validate_bundle(parse_bundle(json.dumps(data)))


def test_dangling_reference_is_refused() -> None:
    data = json.loads(to_json(build_report_bundle(_read())))
    data["entry"][0]["resource"]["result"] = [{"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}]
    with pytest.raises(FhirValidationError, match="does not resolve"):
        validate_bundle(parse_bundle(json.dumps(data)))


def test_non_bundle_json_is_refused() -> None:
    with pytest.raises(FhirValidationError):
        parse_bundle('{"resourceType": "Bundle", "type": 7}')
    with pytest.raises(FhirValidationError):
        parse_bundle("not json")
