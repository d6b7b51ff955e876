"""The physician's pages: the worklist of their care team's studies (with red-flag notifications), the
study viewer (server-rendered slices, window presets, scrolling, zoom), the AI preliminary read beside
the image with sign / correct, study upload, and a patient's history.

Everything is read through the records (serving.turns.records_for): a study outside the physician's
care team answers 404 and the attempt is audited there. Opening the viewer is the audited read of the
study; its slice pictures carry a view ticket (bound to the session and the study) and are each checked
against the policy again, but add no audit row of their own, so scrolling a series does not flood the
log. A slice asked for without a valid ticket is audited like any read."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from memory.records import Records
from memory.schema import CareTeamMember, Read, Role, Study
from memory.users import Principal
from serving.api.deps import Services
from serving.api.routes import studies as study_routes
from serving.api.routes.consultations import consultations_of
from serving.auth import session_token
from serving.problems import Problem
from serving.turns import Upload, ingest_study, records_for, resume_review
from serving.web import slices
from serving.web.render import WEB_PREFIX, page
from serving.web.session import checked_form, page_role

router = APIRouter(prefix=WEB_PREFIX + "/physician", include_in_schema=False)
PhysicianUser = Annotated[Principal, Depends(page_role(Role.physician))]
# Shown highlighted: what needs a person soon (an unscreened message may hide a red flag).
RED_FLAGS = {"red_flag", "same_day", "unscreened"}


def care_team(records: Records, physician_id: int) -> list[int]:
    """The ids of the patients this physician cares for (their own memberships: no patient data)."""
    return list(
        records.session.scalars(
            select(CareTeamMember.patient_id)
            .where(CareTeamMember.physician_id == physician_id)
            .order_by(CareTeamMember.patient_id)
        )
    )


def _read_view(read: Read) -> dict[str, Any]:
    provenance = read.provenance or {}
    cited = provenance.get("slices_read") or []
    return {
        "study_id": read.study_id,
        # The slices a series read looked at (its draft cites them by these numbers).
        "slices_read": [int(n) for n in cited if isinstance(n, int) and not isinstance(n, bool)],
        "id": read.id,
        "status": read.status.value,
        "ai_draft": read.ai_draft,
        "final": read.physician_final,
        "model": provenance.get("model", ""),
        "plugin": provenance.get("plugin", ""),
        "adapter_version": provenance.get("adapter_version", ""),
        "demo_weights": bool(provenance.get("demo_weights")),
        "signed_by": (provenance.get("signed_by") or {}).get("name", ""),
        "signed_at": read.signed_at,
    }


def _study_row(records: Records, study: Study, patient_name: str) -> dict[str, Any]:
    reads = records.list_reads(study.id)
    latest = reads[-1] if reads else None
    return {
        "id": study.id,
        "patient_id": study.patient_id,
        "patient": patient_name,
        "modality": study.modality or "?",
        "description": study.description,
        "created_at": study.created_at,
        "status": latest.status.value if latest else None,
    }


@router.get("")
def worklist(request: Request, me: PhysicianUser, services: Services) -> Response:
    with records_for(services, me) as records:
        patients, rows = [], []
        for patient_id in care_team(records, me.user_id):
            patient = records.get_patient(patient_id)
            patients.append({"id": patient.id, "name": patient.display_name})
            rows += [_study_row(records, s, patient.display_name) for s in records.list_studies(patient_id)]
        notes = [
            {
                "kind": n.kind,
                "text": n.text,
                "consultation_id": n.consultation_id,
                "at": n.created_at,
                "red": n.kind in RED_FLAGS,
            }
            for n in reversed(records.my_notifications())
        ]
    rows.sort(key=lambda r: r["id"], reverse=True)
    return page(request, "physician/worklist.html", me=me, studies=rows, patients=patients, notes=notes)


@router.post("/studies")
async def upload_study(request: Request, me: PhysicianUser, services: Services) -> Response:
    """A DICOM study for a patient of the care team, de-identified on arrival (the API's intake)."""
    form = await checked_form(request)
    raw_id, upload = form.get("patient_id"), form.get("file")
    if not isinstance(raw_id, str) or not raw_id.isdigit():
        raise Problem(422, "patient_id: choose a patient")
    if upload is None or isinstance(upload, str) or not upload.filename:
        raise Problem(422, "file: choose a DICOM file")
    limit = services.settings.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise Problem(413, f"{upload.filename} exceeds the limit of {limit} bytes")
    stored = await run_in_threadpool(
        ingest_study, services, me, int(raw_id), Upload(name=upload.filename[-200:], data=data)
    )
    return RedirectResponse(f"{WEB_PREFIX}/physician/studies/{stored.id}", status_code=303)


VIEW_KEY = b"healthagent web study view"


def view_ticket(request: Request, study_id: int) -> str:
    """What the viewer page gives its slice URLs: an HMAC of the study under the session token, so it
    is worthless in another session (or once this one is revoked) and for another study."""
    token = session_token(request) or ""
    return hmac.new(token.encode(), VIEW_KEY + str(study_id).encode(), hashlib.sha256).hexdigest()


def _within_view(request: Request, study_id: int, ticket: str | None) -> bool:
    return bool(ticket) and hmac.compare_digest(view_ticket(request, study_id), ticket or "")


@router.get("/studies/{study_id}")
def viewer(
    request: Request,
    study_id: int,
    me: PhysicianUser,
    services: Services,
    slice_number: int | None = Query(default=None, alias="slice", ge=1),
) -> Response:
    """The viewer: the study's audited read, its slices (every instance of a series), its reads.
    ``?slice=`` opens it at a slice (the links a read gives to the slices it cites)."""
    with records_for(services, me) as records:
        study = records.get_study(study_id)
        patient = records.get_patient(study.patient_id)
        reads = [_read_view(r) for r in records.list_reads(study_id)]
        shown = slices.slices_of(study.deidentified_metadata)
        modality, description = study.modality, study.description
    fetch = services.pixels.get
    count = shown.count(fetch) if shown else 0
    file_window = shown.middle(fetch).window if shown else (0.0, 1.0)
    # Every preset's (centre, width), "default" being the file's own: where dragging starts from.
    windows = {name: list(w or file_window) for name, w in slices.PRESETS.items()}
    start = min(slice_number, count) if slice_number and count else (count + 1) // 2
    return page(
        request,
        "physician/viewer.html",
        me=me,
        study={
            "id": study_id,
            "modality": modality or "?",
            "description": description,
            "frames": count,
            "series": bool(shown and shown.series),
            "start": start,
        },
        view=view_ticket(request, study_id),
        windows=json.dumps(windows),
        patient={"id": patient.id, "name": patient.display_name},
        reads=reads,
        pending=any(r["status"] == "preliminary" for r in reads),
        presets=list(slices.PRESETS),
    )


@router.get("/studies/{study_id}/slices/{number}")
def slice_png(
    request: Request,
    study_id: int,
    number: int,
    me: PhysicianUser,
    services: Services,
    preset: str | None = None,
    c: float | None = Query(default=None),
    w: float | None = Query(default=None),
    view: str | None = Query(default=None, max_length=128),
) -> Response:
    """Slice ``number`` (from 1) as a PNG through the asked window. Access is checked for every
    picture; within the viewer's view (its ticket) an allowed one adds no audit row, since opening
    the viewer was audited; a refusal always does."""
    window = slices.parse_window(preset, c, w)
    with records_for(services, me) as records:
        if _within_view(request, study_id, view):
            study = records.study_within_view(study_id)
        else:
            study = records.get_study(study_id)
        shown = slices.slices_of(study.deidentified_metadata)
    if shown is None:
        raise Problem(404, "this study has no stored DICOM")
    picture = slices.render_slice(shown, number, window, services.pixels.get)
    return Response(picture, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.post("/studies/{study_id}/reads")
async def request_read(request: Request, study_id: int, me: PhysicianUser, services: Services) -> Response:
    await checked_form(request)
    await study_routes.request_read(study_id, me, services)
    return RedirectResponse(f"{WEB_PREFIX}/physician/studies/{study_id}", status_code=303)


@router.post("/reads/{read_id}/signoff")
async def signoff(request: Request, read_id: int, me: PhysicianUser, services: Services) -> Response:
    """Sign the draft as it is, or sign a correction (kept as feedback on the adapter that drafted it,
    as the API's sign-off does: it is the same review step)."""
    form = await checked_form(request)
    action, text = form.get("action"), form.get("text")
    text = text.strip() if isinstance(text, str) else ""
    if action not in ("sign", "correct"):
        raise Problem(422, "action: sign or correct")
    if action == "correct" and not text:
        raise Problem(422, "text: a correction needs the corrected read")
    with records_for(services, me) as records:
        study_id = records.get_read(read_id).study_id
    await run_in_threadpool(
        resume_review, services, me, read_id, action, text if action == "correct" else None
    )
    return RedirectResponse(f"{WEB_PREFIX}/physician/studies/{study_id}", status_code=303)


@router.get("/patients/{patient_id}")
def history(request: Request, patient_id: int, me: PhysicianUser, services: Services) -> Response:
    with records_for(services, me) as records:
        patient = records.get_patient(patient_id)
        consultations = []
        for c in consultations_of(records, me, patient_id):
            said = [m for m in records.list_messages(c.id) if m.author_role != "assistant"]
            consultations.append(
                {
                    "id": c.id,
                    "created_at": c.created_at,
                    "flag": c.flag,
                    "first": said[0].content if said else "",
                }
            )
        studies = []
        for study in records.list_studies(patient_id):
            row = _study_row(records, study, patient.display_name)
            row["reads"] = [_read_view(r) for r in records.list_reads(study.id)]
            studies.append(row)
    return page(
        request,
        "physician/history.html",
        me=me,
        patient={"id": patient.id, "name": patient.display_name},
        consultations=consultations,
        studies=studies,
    )
