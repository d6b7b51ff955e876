"""A FHIR R4 facade over the reads: ``DiagnosticReport`` by id, and a ``searchset`` Bundle of a patient's
reports with what they refer to (findings Observation, ImagingStudy, the AI Device, the signing
Practitioner, Provenance). Status follows the read: preliminary → final → amended.

The same access policy as the rest of the API, through the records: a report the caller may not see
answers 404 like a missing one (and the attempt is audited); patients never see a preliminary report.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from memory.records import Records
from memory.schema import PacsImport, Read, Role, Study
from serving.api.deps import Caller, Services
from serving.api.schemas import ERROR_RESPONSES, PathId
from serving.problems import Problem
from serving.reports import read_report
from serving.turns import records_for
from tools.fhir import build_report_bundle, report_of, search_bundle, to_json, validate_bundle

FHIR_JSON = "application/fhir+json"
BASE = "/fhir/r4"

router = APIRouter(prefix=BASE, tags=["fhir"], responses=ERROR_RESPONSES)


class FhirResource(BaseModel):
    """A FHIR R4 resource (``resourceType`` says which); the full schema is FHIR's own."""

    model_config = ConfigDict(extra="allow")

    resourceType: str = Field(description="DiagnosticReport, or Bundle (type searchset) for a search")


def _documented(description: str) -> dict[int | str, dict[str, Any]]:
    schema = {"$ref": "#/components/schemas/FhirResource"}
    return {200: {"description": description, "content": {FHIR_JSON: {"schema": schema}}}}


def _fhir(payload: str) -> Response:
    return Response(payload, media_type=FHIR_JSON)


def _bundle_of(request: Request, records: Records, read: Read, study: Study) -> Any:
    origin = records.session.scalar(select(PacsImport).where(PacsImport.study_id == study.id))
    url = str(request.base_url).rstrip("/") + f"{BASE}/DiagnosticReport/{read.id}"
    report = read_report(read, study, origin).model_copy(update={"report_url": url})
    return validate_bundle(build_report_bundle(report))


@router.get("/DiagnosticReport/{read_id}", response_model=FhirResource, responses=_documented("A report"))
def read_diagnostic_report(
    request: Request, read_id: PathId, principal: Caller, services: Services
) -> Response:
    """One report (the id is the read's)."""
    with records_for(services, principal) as records:
        read = records.get_read(read_id)
        study = records.session.get(Study, read.study_id)
        bundle = _bundle_of(request, records, read, study)
    return _fhir(report_of(bundle).model_dump_json())


def _patient_id(patient: str | None, principal: Any, records: Records) -> int:
    if patient is None:
        own = records.patient_of_user(principal.user_id) if principal.role is Role.patient else None
        if own is None:
            raise Problem(422, "patient: required (an id, or Patient/<id>)")
        return own.id
    text = patient.removeprefix("Patient/")
    if not text.isdigit() or not 1 <= int(text) <= 2**31 - 1:
        raise Problem(422, "patient: an id, or Patient/<id>")
    return int(text)


@router.get("/DiagnosticReport", response_model=FhirResource, responses=_documented("A searchset Bundle"))
def search_diagnostic_reports(
    request: Request,
    principal: Caller,
    services: Services,
    patient: Annotated[str | None, Query(max_length=80, description="Patient/<id> or <id>")] = None,
) -> Response:
    """A patient's reports as a ``searchset`` Bundle (patients: their own, signed ones)."""
    with records_for(services, principal) as records:
        patient_id = _patient_id(patient, principal, records)
        bundles = [
            _bundle_of(request, records, read, study)
            for study in records.list_studies(patient_id)
            for read in records.list_reads(study.id)
        ]
    searchset = search_bundle(bundles)
    return _fhir(json.dumps(json.loads(to_json(searchset))))
