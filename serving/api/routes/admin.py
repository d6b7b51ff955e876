"""Administration: feedback counts, adapter versions, fine-tune jobs, promotion and rollback — never
patient data. Every action is audited (memory.records)."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.datastructures import UploadFile

from memory.schema import AdapterVersion, FineTuneJob
from serving.api.deps import Admin, RecordsSession, Services
from serving.api.schemas import (
    ERROR_RESPONSES,
    AdapterOut,
    AdaptersOut,
    DatasetForm,
    DatasetOut,
    FeedbackCount,
    FineTuneAccepted,
    FineTuneCreate,
    FineTuneOut,
    GateOut,
    JobEventOut,
    PathId,
    PluginName,
    PromoteRequest,
    PromotionOut,
    RollbackRequest,
)
from serving.problems import Problem
from serving.services import GatewayServices
from serving.turns import records_for

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERROR_RESPONSES)


@router.get("/feedback/summary", response_model=list[FeedbackCount])
def feedback_summary(_admin: Admin, records: RecordsSession) -> list[FeedbackCount]:
    """Feedback counts per plugin, adapter version and kind (no patient data)."""
    return [FeedbackCount.model_validate(a) for a in records.feedback_aggregates()]


@router.get("/adapters", response_model=AdaptersOut)
def adapters(principal: Admin, services: Services) -> AdaptersOut:
    """Registered adapter versions, and what the model serves now."""
    with records_for(services, principal) as records:
        registered = [AdapterOut.model_validate(a) for a in records.list_adapters()]
    # Asked after the transaction closes: the model may take seconds to answer.
    return AdaptersOut(registered=registered, serving=services.model.info())


def _finetunes(services: GatewayServices):
    if services.finetunes is None:
        raise Problem(503, "this gateway runs no fine-tune jobs")
    return services.finetunes


def job_out(job: FineTuneJob, candidate: AdapterVersion | None) -> FineTuneOut:
    gate = GateOut.model_validate(job.gate) if job.gate else None
    return FineTuneOut(
        id=job.id,
        plugin=job.plugin,
        status=job.status,
        config=job.config or {},
        champion_version=job.champion_version,
        candidate_version=candidate.version if candidate is not None else None,
        progress=job.progress,
        dataset=job.dataset,
        gate=gate,
        error=job.error,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
    )


def _job_out(records, job: FineTuneJob) -> FineTuneOut:
    candidate = records.session.get(AdapterVersion, job.result_adapter_id) if job.result_adapter_id else None
    return job_out(job, candidate)


@router.post("/finetunes", status_code=202, response_model=FineTuneAccepted)
def start_finetune(body: FineTuneCreate, principal: Admin, services: Services) -> FineTuneAccepted:
    """Start a fine-tune of a plugin on the feedback gathered since its champion: a dataset snapshot,
    stage-3 training, the evaluation gate, and a candidate (or rejected) adapter. Runs in the background;
    follow it at ``/v1/admin/finetunes/{id}`` and ``…/events``. One job per plugin at a time (409)."""
    from serving.finetune import JobRequest

    request = JobRequest(
        body.plugin,
        body.method,
        body.since,
        body.min_examples,
        body.epochs,
        datasets=tuple(dict.fromkeys(body.datasets)),  # a dataset named twice is trained on once
        feedback=body.feedback,
    )
    service = _finetunes(services)
    job = _domain(lambda: service.submit(principal, request))
    return FineTuneAccepted.model_validate(job)


# -- curated datasets --------------------------------------------------------------------------------
MAX_DATASET_FILES = 64  # the JSONL and its pictures; larger sets: `healthagent adapters datasets add`
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
DATASET_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "plugin"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "plugin": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$", "maxLength": 100},
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    },
                }
            }
        },
    }
}


@router.post("/datasets", status_code=201, response_model=DatasetOut, openapi_extra=DATASET_BODY)
async def add_dataset(request: Request, principal: Admin, services: Services) -> DatasetOut:
    """Register a curated dataset: ``file``, a JSONL of ``{"question", "answer", "image"?, "group"?}``
    rows, with each picture a row names as an ``images`` part of that file name. Every bad row is
    answered at once (422, each ``file:line``); the same rows registered twice are a 409. Start a job on
    it with ``POST /v1/admin/finetunes {"datasets": [id]}``."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
        raise Problem(415, "send multipart/form-data: 'file' (the JSONL), 'plugin', optional 'images'")
    limit = services.settings.max_upload_bytes
    form = await request.form(max_files=MAX_DATASET_FILES, max_fields=8)
    try:
        fields, upload = await _dataset_parts(form, limit)
    finally:
        await form.close()
    try:
        meta = DatasetForm.model_validate(fields)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise Problem(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors) from exc
    if meta.plugin not in services.model.info().adapter_versions:
        raise Problem(422, f"plugin: unknown plugin {meta.plugin!r}")
    entry = await run_in_threadpool(_register_upload, services, principal, meta, upload)
    return DatasetOut.model_validate(entry.model_dump())


@dataclass
class _DatasetUpload:
    jsonl_name: str = ""
    jsonl: bytes | None = None
    images: dict[str, bytes] = field(default_factory=dict)


async def _dataset_parts(form, limit: int) -> tuple[dict[str, str], _DatasetUpload]:
    """The text fields, and the JSONL and pictures under their (checked) file names."""
    fields: dict[str, str] = {}
    upload = _DatasetUpload()
    for key, value in form.multi_items():
        if key not in ("file", "images"):
            if isinstance(value, UploadFile):
                raise Problem(422, f"{key}: must be a text field")
            fields[key] = value
            continue
        if not isinstance(value, UploadFile):
            raise Problem(422, f"{key}: must be a file part")
        data = await value.read(limit + 1)
        if len(data) > limit:
            raise Problem(413, f"{key}: a file exceeds the limit of {limit} bytes")
        name = value.filename or ""
        if key == "file":
            if upload.jsonl is not None:
                raise Problem(422, "file: send exactly one JSONL file")
            # The client's name, when plain, is the one the row problems quote ("rows.jsonl:3: …").
            upload.jsonl_name, upload.jsonl = (name if _SAFE_NAME.match(name) else "dataset.jsonl"), data
            continue
        if not _SAFE_NAME.match(name):
            raise Problem(422, f"images: {name[:200]!r} is not a plain file name (letters, digits, _ . -)")
        if name in upload.images:
            raise Problem(422, f"images: {name!r} was sent twice")
        upload.images[name] = data
    if upload.jsonl is None:
        raise Problem(422, "file: the JSONL dataset is required")
    if upload.jsonl_name in upload.images:
        raise Problem(422, f"images: {upload.jsonl_name!r} is the JSONL file's name")
    return fields, upload


def _register_upload(services: GatewayServices, principal, meta: DatasetForm, upload: _DatasetUpload):
    from serving.finetune import register_dataset
    from tools.finetune.curated import DatasetExists
    from tools.finetune.dataset import DatasetError

    with tempfile.TemporaryDirectory(prefix="dataset-") as temporary:
        # The rows name pictures relative to the JSONL: the pictures lie beside it, and nothing else does.
        folder = Path(temporary)
        for name, data in upload.images.items():
            (folder / name).write_bytes(data)
        jsonl = folder / upload.jsonl_name
        jsonl.write_bytes(upload.jsonl or b"")
        try:
            with records_for(services, principal) as records:
                return register_dataset(
                    records,
                    services.settings,
                    services.pixels,
                    jsonl,
                    meta.plugin,
                    name=meta.name,
                    confined=True,
                )
        except DatasetExists as exc:
            raise Problem(409, str(exc)) from exc
        except DatasetError as exc:
            errors = [{"field": "file", "message": problem} for problem in exc.problems]
            raise Problem(422, "file: " + "; ".join(exc.problems), errors=errors) from exc


@router.get("/datasets", response_model=list[DatasetOut])
def datasets(principal: Admin, services: Services, plugin: PluginName | None = None) -> list[DatasetOut]:
    """Registered curated datasets, oldest first."""
    from serving.finetune import list_datasets

    with records_for(services, principal) as records:
        found = list_datasets(records, services.settings, plugin)
    return [DatasetOut.model_validate(entry.model_dump()) for entry in found]


def _domain(call):
    """Domain errors raised outside a records transaction, answered like the records' own."""
    from memory.records import AccessDenied, Conflict, InvalidInput, NotFound

    try:
        return call()
    except Conflict as exc:
        raise Problem(409, str(exc)) from exc
    except (NotFound, AccessDenied) as exc:
        raise Problem(404, "not found") from exc
    except InvalidInput as exc:
        raise Problem(422, str(exc)) from exc


@router.get("/finetunes", response_model=list[FineTuneOut])
def list_finetunes(
    _admin: Admin,
    records: RecordsSession,
    plugin: PluginName | None = None,
    limit: int = Query(default=50, ge=1, le=500),
) -> list[FineTuneOut]:
    """Fine-tune jobs, newest first."""
    return [_job_out(records, job) for job in records.list_jobs(plugin, limit)]


@router.get("/finetunes/{job_id}", response_model=FineTuneOut)
def get_finetune(job_id: PathId, _admin: Admin, records: RecordsSession) -> FineTuneOut:
    """A job: its status, latest progress, dataset, the gate's report and the candidate version."""
    return _job_out(records, records.get_job(job_id))


def _sse(events: Iterator) -> Iterator[str]:
    for event in events:
        yield f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(event.data, default=str)}\n\n"


@router.get(
    "/finetunes/{job_id}/events",
    response_model=list[JobEventOut],
    responses={200: {"content": {"text/event-stream": {}}, "description": "the job's events"}},
)
def finetune_events(
    job_id: PathId, request: Request, principal: Admin, services: Services
) -> list[JobEventOut] | StreamingResponse:
    """The job's progress events. With ``Accept: text/event-stream``: the history, then live events
    until the job ends (``Last-Event-ID`` resumes after an event); otherwise the history as JSON."""
    with records_for(services, principal) as records:
        records.get_job(job_id)  # exists, and the read is audited
    events = services.backends.events
    if "text/event-stream" in request.headers.get("accept", ""):
        after = request.headers.get("last-event-id") or None
        stream = _sse(events.follow(job_id, after=after, timeout_s=30.0))
        return StreamingResponse(iterate_in_threadpool(stream), media_type="text/event-stream")
    return [JobEventOut.model_validate(e.model_dump()) for e in events.history(job_id)]


@router.post("/finetunes/{job_id}/cancel", status_code=202, response_model=FineTuneAccepted)
def cancel_finetune(job_id: PathId, principal: Admin, services: Services) -> FineTuneAccepted:
    """Stop a job: a queued one at once, a running one after its current step (409 once it ended)."""
    service = _finetunes(services)
    job = service.cancel(principal, job_id)
    return FineTuneAccepted.model_validate(job)


@router.post("/adapters/{version}/promote", response_model=PromotionOut)
async def promote_adapter(
    version: PluginName, body: PromoteRequest, principal: Admin, services: Services
) -> PromotionOut:
    """Make a version its plugin's champion: every replica hot-swaps to it (no restart, no failed
    request) and new answers carry it in their provenance. A version that failed the gate needs
    ``override_gate: true``; the reason is audited."""
    service = _finetunes(services)
    adapter, previous = await run_in_threadpool(
        _domain, lambda: service.promote(principal, version, body.reason, body.override_gate)
    )
    return PromotionOut(
        plugin=adapter.plugin,
        version=adapter.version,
        previous=previous.version if previous else None,
        status=adapter.status,
    )


@router.post("/adapters/{plugin}/rollback", response_model=PromotionOut)
async def rollback_adapter(
    plugin: PluginName, body: RollbackRequest, principal: Admin, services: Services
) -> PromotionOut:
    """Return a plugin to its previous champion (hot-swapped like a promotion; audited with the
    reason). The version rolled back from is marked ``rolled_back``."""
    service = _finetunes(services)
    adapter, previous = await run_in_threadpool(
        _domain, lambda: service.rollback(principal, plugin, body.reason)
    )
    return PromotionOut(
        plugin=adapter.plugin,
        version=adapter.version,
        previous=previous.version if previous else None,
        status=adapter.status,
    )
