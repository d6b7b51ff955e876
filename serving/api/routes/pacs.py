"""The PACS: physicians search it (QIDO-RS) and import a study from it for a second read; signed reports
go back to it through the outbox, whose worker this router starts with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from serving.api.deps import Physician, Services
from serving.api.schemas import ERROR_RESPONSES, StudyOut
from serving.outbox import ReportOutbox
from serving.pacs_bridge import import_study, search_studies
from serving.problems import Problem
from serving.turns import records_for
from tools.pacs import StudyQuery

UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
Uid = Annotated[str, Field(pattern=UID_PATTERN, max_length=64)]


@asynccontextmanager
async def outbox_worker(app: FastAPI) -> AsyncIterator[None]:
    """One outbox worker per gateway replica, for the app's lifetime (none where no PACS is set)."""
    services = getattr(app.state, "services", None)
    sessions = getattr(services, "sessions", None)
    worker = ReportOutbox(sessions, services.settings.pacs, services.pixels) if sessions is not None else None
    app.state.outbox = worker
    if worker is not None:
        worker.start()
    try:
        yield
    finally:
        if worker is not None:
            await run_in_threadpool(worker.close)


router = APIRouter(tags=["pacs"], responses=ERROR_RESPONSES, lifespan=outbox_worker)


def outbox_of(request: Request) -> ReportOutbox:
    """The app's outbox (made on first use where the app was built without its lifespan)."""
    worker = getattr(request.app.state, "outbox", None)
    if worker is None:
        services = request.app.state.services
        worker = request.app.state.outbox = ReportOutbox(
            services.sessions, services.settings.pacs, services.pixels
        )
    return worker


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: Uid = Field(description="The study in the PACS (its original UID).")
    patient_id: int = Field(ge=1, description="Our patient the study belongs to (in your care team).")
    series_instance_uid: Uid | None = Field(
        default=None, description="The series to read; default: the study's largest image series."
    )


class PacsStudyOut(BaseModel):
    study_instance_uid: str
    patient_id: str | None = Field(description="The PACS's patient ID (not ours).")
    study_date: str | None = Field(description="YYYYMMDD")
    description: str | None
    accession_number: str | None
    modalities: list[str]
    series_count: int | None
    instance_count: int | None


@router.post("/v1/studies/import", status_code=201, response_model=StudyOut, tags=["studies"])
async def import_from_pacs(body: ImportRequest, principal: Physician, services: Services) -> StudyOut:
    """Import one series of a PACS study for a patient in your care team: retrieved over WADO-RS,
    de-identified and stored exactly as an upload (the original UIDs are kept apart, for the signed
    report's way back). The PACS down: 502; too slow: 504 (both with Retry-After); nothing is stored."""
    study_id = await run_in_threadpool(
        import_study,
        services,
        principal,
        body.patient_id,
        body.study_instance_uid,
        body.series_instance_uid,
    )
    with records_for(services, principal) as records:
        return StudyOut.model_validate(records.get_study(study_id))


@router.get("/v1/pacs/studies", response_model=list[PacsStudyOut])
async def search_pacs(
    principal: Physician,
    services: Services,
    patient_id: Annotated[str | None, Query(max_length=64, description="The PACS's patient ID.")] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    modality: Annotated[str | None, Query(pattern=r"^[A-Z0-9_]{1,16}$")] = None,
    accession_number: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PacsStudyOut]:
    """Studies in the PACS (QIDO-RS), by the PACS's patient ID, study date range and modality; audited."""
    if date_from and date_to and date_from > date_to:
        raise Problem(422, "date_from: after date_to")
    query = StudyQuery(
        patient_id=patient_id,
        date_from=date_from,
        date_to=date_to,
        modality=modality,
        accession_number=accession_number,
        limit=limit,
    )
    found = await run_in_threadpool(search_studies, services, principal, query)
    return [
        PacsStudyOut(
            study_instance_uid=s.study_uid,
            patient_id=s.patient_id,
            study_date=s.study_date,
            description=s.description,
            accession_number=s.accession_number,
            modalities=s.modalities,
            series_count=s.series_count,
            instance_count=s.instance_count,
        )
        for s in found
    ]
