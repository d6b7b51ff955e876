"""Images the model generates from a study (reconstruction, super-resolution, CT↔MRI) at a physician's
request: kept as PRELIMINARY derived images of the study until a physician of the care team accepts or
rejects them. An accepted image of a study imported from the PACS goes back to the ORIGINAL study as a
DICOM Secondary Capture, through the same outbox as the signed reports (pending until the PACS has it)."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from memory import outbox
from memory.pixels import PixelStore
from memory.schema import DerivedImage, DerivedStatus
from memory.users import Principal
from serving.api.deps import Caller, Physician, Services
from serving.api.routes.pacs import outbox_of
from serving.api.schemas import (
    ERROR_RESPONSES,
    DerivedImageOut,
    DerivedImageRequest,
    DerivedImageReview,
    PacsCaptureOut,
    PathId,
)
from serving.outbox import LEASE_S, state_of
from serving.problems import Problem
from serving.services import GatewayServices
from serving.turns import records_for
from tools.dicom_io import MAX_SLICES, DicomError, load_dicom, read_dataset, render_dataset
from tools.healthgpt import ImageRequest, ImageResult, ImageTask

router = APIRouter(prefix="/v1/studies", tags=["studies"], responses=ERROR_RESPONSES)

PNG = "image/png"
_PNG_DOCUMENTED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The generated PNG; with Accept: application/json, its record.",
        "content": {PNG: {"schema": {"type": "string", "format": "binary"}}},
    }
}


@dataclass(frozen=True)
class SourceSlice:
    number: int  # 1-based, in the study's slice order
    png: bytes  # the de-identified picture the model starts from


def _png(picture: Any) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _rendered(pixels: PixelStore, metadata: dict[str, Any], number: int, total: int) -> bytes:
    """Slice ``number`` rendered from the study's de-identified DICOM: the n-th instance of a series, or
    frame n of a multi-frame object (decoded with every other frame, hence the frame limit)."""
    keys = list(metadata.get("series_keys") or [])
    try:
        if len(keys) == total:
            return _png(load_dicom(pixels.get(keys[number - 1])).images[0])
        if len(keys) == 1 and total <= MAX_SLICES:
            return _png(render_dataset(read_dataset(pixels.get(keys[0])), slices=total).images[number - 1])
    except DicomError as exc:
        raise Problem(422, f"slice: slice {number} cannot be rendered: {exc}") from exc
    raise Problem(422, f"slice: slice {number} of this study cannot be rendered; leave it out (key slice)")


# A conversion starts from one modality; the study's own (when it says) must be that one.
_CONVERTS_FROM = {"ct_to_mri": ("CT", "a CT"), "mri_to_ct": ("MR", "an MRI")}


def _source_slice(
    services: GatewayServices, principal: Principal, study_id: int, wanted: int | None, task: str
) -> SourceSlice:
    """The picture to generate from: the study's key (middle) slice, or the slice asked for. Every one is
    de-identified: the study's own pictures, or rendered from its de-identified DICOM."""
    with records_for(services, principal) as records:
        study = records.get_study(study_id)  # outside the care team: 404, audited
        metadata, key_png, modality = dict(study.deidentified_metadata or {}), study.pixel_key, study.modality
    if task in _CONVERTS_FROM and modality and modality.upper() != _CONVERTS_FROM[task][0]:
        raise Problem(422, f"task: {task} converts {_CONVERTS_FROM[task][1]}; this study is {modality}")
    total = int(metadata.get("slice_count") or 1)
    key_number = total // 2 + 1  # the intake keeps the middle slice (frame) as the study's picture
    number = wanted or key_number
    if not 1 <= number <= total:
        raise Problem(422, f"slice: the study has {total} slice(s); ask for 1 to {total}")
    if number == key_number and key_png:
        return SourceSlice(number, services.pixels.get(key_png))
    read = {int(item["slice"]): str(item["key"]) for item in metadata.get("read_slices") or []}
    if number in read:
        return SourceSlice(number, services.pixels.get(read[number]))
    return SourceSlice(number, _rendered(services.pixels, metadata, number, total))


def _shown(session: Session, image: DerivedImage) -> DerivedImageOut:
    """The record as the API shows it: where its PNG is, and (accepted) its secondary capture's state."""
    out = DerivedImageOut.model_validate(image)
    out.url = f"/v1/studies/{image.study_id}/images/{image.id}"
    if image.status is DerivedStatus.accepted:
        pushes = outbox.pushes_of_image(session, image.id)
        if not pushes:  # an upload: there is no original study to return to
            out.pacs = PacsCaptureOut(status="not_from_pacs")
        else:
            state = state_of(pushes[0])
            out.pacs = PacsCaptureOut(
                status=state.status,  # type: ignore[arg-type]
                attempts=state.attempts,
                sop_instance_uid=state.sr_uid,
                last_error=state.last_error,
            )
    return out


def _record(
    services: GatewayServices,
    principal: Principal,
    study_id: int,
    task: str,
    source: SourceSlice,
    result: ImageResult,
) -> DerivedImageOut:
    key = services.pixels.put(result.png)
    provenance = {**result.provenance.model_dump(exclude_none=True), "task": task}
    provenance["source_slice"] = source.number
    with records_for(services, principal) as records:
        image = records.add_derived_image(
            study_id, task=task, source_slice=source.number, pixel_key=key, provenance=provenance
        )
        return _shown(records.session, image)


@router.post("/{study_id}/images", status_code=201, response_model=DerivedImageOut)
async def generate_image(
    study_id: PathId, body: DerivedImageRequest, principal: Physician, services: Services
) -> DerivedImageOut:
    """Generate an image from the study's key slice (or ``slice``): reconstruction, super-resolution, CT to
    MRI or MRI to CT. Physicians of the patient's care team; the image is PRELIMINARY until reviewed
    (``POST …/images/{image_id}/review``)."""
    source = await run_in_threadpool(_source_slice, services, principal, study_id, body.slice, body.task)
    request = ImageRequest(task=ImageTask(body.task), image=source.png)
    result = await asyncio.to_thread(services.model.generate_image, request)
    return await run_in_threadpool(_record, services, principal, study_id, body.task, source, result)


def _wants_record(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and PNG not in accept


@router.get("/{study_id}/images/{image_id}", response_model=DerivedImageOut, responses=_PNG_DOCUMENTED)
def get_image(
    request: Request, study_id: PathId, image_id: PathId, principal: Caller, services: Services
) -> Response | DerivedImageOut:
    """The generated PNG (``Accept: application/json``: its record). The care team sees every image; a
    patient sees their own once a physician accepted it; anyone else gets 404 (audited)."""
    with records_for(services, principal) as records:
        image = records.get_derived_image(study_id, image_id)
        shown, key = _shown(records.session, image), image.pixel_key
    if _wants_record(request):
        return shown
    # Private: a shared cache must never hand one patient's image to another caller.
    return Response(services.pixels.get(key), media_type=PNG, headers={"Cache-Control": "private, no-store"})


def _review(
    services: GatewayServices, principal: Principal, study_id: int, image_id: int, body: DerivedImageReview
) -> int | None:
    """Record the verdict and, for an accepted image of an imported study, its push, in one transaction:
    an accepted image is never left without its way back to the PACS."""
    with records_for(services, principal) as records:
        image = records.review_derived_image(study_id, image_id, body.action == "accept", body.reason or "")
        push = outbox.enqueue_image(records.session, image, hold_s=LEASE_S)
        return push.id if push is not None else None


def _current(
    services: GatewayServices, principal: Principal, study_id: int, image_id: int
) -> DerivedImageOut:
    with records_for(services, principal) as records:
        return _shown(records.session, records.get_derived_image(study_id, image_id))


@router.post("/{study_id}/images/{image_id}/review", response_model=DerivedImageOut)
async def review_image(
    request: Request,
    study_id: PathId,
    image_id: PathId,
    body: DerivedImageReview,
    principal: Physician,
    services: Services,
) -> DerivedImageOut:
    """Accept or reject a preliminary generated image (once; again: 409). An accepted image of a study
    imported from the PACS is stored in the original study as a Secondary Capture; ``pacs.status`` says
    whether the PACS has it yet (pending, delivered) or that there is none to return to (an upload)."""
    push_id = await run_in_threadpool(_review, services, principal, study_id, image_id, body)
    if push_id is not None:
        worker = outbox_of(request)
        if not await run_in_threadpool(worker.deliver, push_id):
            worker.kick()
    return await run_in_threadpool(_current, services, principal, study_id, image_id)
