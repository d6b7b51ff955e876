"""The gateway's side of the PACS: a client from the settings, its failures as problem answers, and the
import of a study (retrieve over WADO-RS, then the one intake an upload goes through)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from agents import Upload
from memory.records import Records
from memory.schema import Study
from memory.users import Principal
from serving.problems import Problem
from serving.settings import PacsSettings
from serving.turns import ingest_series, records_for
from tools.pacs import (
    PacsClient,
    PacsConfig,
    PacsError,
    PacsRejected,
    PacsTimeout,
    SeriesSummary,
    StudyNotFound,
    StudyQuery,
    StudySummary,
)

if TYPE_CHECKING:
    from serving.services import GatewayServices

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30
# Series that are not images a model can read: reports, key-object notes, presentation states,
# segmentations, encapsulated documents.
_NOT_IMAGES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC", "REG"}


def pacs_config(settings: PacsSettings) -> PacsConfig:
    if not settings.configured:
        # A route this deployment does not offer, rather than a server fault: 404 with the reason.
        raise Problem(404, "no PACS is configured here (setting pacs.url, env HEALTHAGENT_PACS__URL)")
    return settings.client_config()


@contextmanager
def pacs_problems() -> Iterator[None]:
    """A PACS failure as the caller's answer: 504 slow, 502 down or refusing, 404 no such study. The
    details name no address (the log has the full message)."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    try:
        yield
    except StudyNotFound as exc:
        raise Problem(404, "the PACS has no such study or series") from exc
    except PacsTimeout as exc:
        log.warning("PACS timeout: %s", exc)
        raise Problem(504, "the PACS did not answer in time; retry later", headers=retry) from exc
    except PacsRejected as exc:
        log.warning("PACS refused: %s", exc)
        raise Problem(502, "the PACS refused the request", headers=retry) from exc
    except PacsError as exc:
        log.warning("PACS unavailable: %s", exc)
        raise Problem(502, "the PACS is unavailable; retry later", headers=retry) from exc


def search_studies(services: GatewayServices, principal: Principal, query: StudyQuery) -> list[StudySummary]:
    """A physician's QIDO search, audited with its filters and how many studies it found (the records
    refuse anyone else)."""
    config = pacs_config(services.settings.pacs)
    with pacs_problems(), PacsClient(config) as pacs:
        found = pacs.search_studies(query)
    with records_for(services, principal) as records:  # recorded before anything is shown
        records.audit_pacs_search(query.filters(), found=len(found))
    return found


def _chosen_series(series: list[SeriesSummary], wanted: str | None, limit: int) -> str:
    """The series to import: the one named, else the study's largest image series; checked against the
    size limit before any pixels travel."""
    if wanted is not None:
        chosen = next((s for s in series if s.series_uid == wanted), None)
        if chosen is None:
            raise Problem(404, "the PACS has no such study or series")
    else:
        images = [s for s in series if (s.modality or "").upper() not in _NOT_IMAGES]
        if not images:
            raise Problem(422, "series_instance_uid: the study has no image series")
        chosen = max(images, key=lambda s: (s.instance_count or 0, -(s.series_number or 0)))
    if (chosen.instance_count or 0) > limit:
        count = chosen.instance_count
        raise Problem(422, f"the series has {count} instances; the limit is {limit} (pacs.max_instances)")
    return chosen.series_uid


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def import_study(
    services: GatewayServices,
    principal: Principal,
    patient_id: int,
    study_uid: str,
    series_uid: str | None,
) -> int:
    """One series of a PACS study becomes a de-identified study of ``patient_id`` (the id of the new
    study). Access is checked before the PACS is asked; nothing is stored unless all of it arrived and
    the intake took every instance."""
    settings = services.settings.pacs
    config = pacs_config(settings)
    with records_for(services, principal) as records:
        records.get_patient(patient_id)  # a patient outside the caller's care team: 404, audited
    with pacs_problems(), PacsClient(config) as pacs:
        chosen = _chosen_series(pacs.search_series(study_uid), series_uid, settings.max_instances)
        instances = pacs.retrieve_series(study_uid, chosen)
    if any(str(ds.get("StudyInstanceUID", "")) != study_uid for ds in instances):
        raise Problem(502, "the PACS answered with instances of another study")
    uploads = [Upload(f"instance {i + 1}", _part10(ds)) for i, ds in enumerate(instances)]
    original = [[str(ds.SOPClassUID), str(ds.SOPInstanceUID)] for ds in instances]

    def link(records: Records, study: Study, order: list[int]) -> None:
        # Inside the study's own transaction: the mapping exists exactly when the study does.
        records.add_pacs_import(
            study.id, study_uid=study_uid, series_uid=chosen, instances=[original[i] for i in order]
        )

    stored = ingest_series(services, principal, patient_id, uploads, link=link)
    return stored.id
