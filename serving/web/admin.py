"""The admin's pages: feedback per adapter version (charts), adapters and what is served, fine-tunes
(start one, follow it live, read its gate report), promotion and rollback with a reason, and users.

Actions call the admin API's own route functions with the signed-in admin, so the checks, the audit
and the answers are the API's; nothing here shows patient data."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from memory.records import Records
from memory.schema import Feedback, Role
from memory.users import Principal
from serving.api.deps import Services
from serving.api.routes import admin as admin_routes
from serving.api.schemas import FineTuneCreate, PromoteRequest, RollbackRequest
from serving.problems import Problem
from serving.turns import records_for
from serving.web.charts import Bar, columns, grouped_bars
from serving.web.i18n import choose_language, translator
from serving.web.render import WEB_PREFIX, page
from serving.web.session import checked_form, page_role

router = APIRouter(prefix=WEB_PREFIX + "/admin", include_in_schema=False)
AdminUser = Annotated[Principal, Depends(page_role(Role.admin))]
DAYS = 30


def daily_feedback(records: Records, days: int = DAYS) -> list[tuple[str, int]]:
    """Feedback given per day over the last ``days``: counts only. The aggregate read is authorized and
    audited by the records first (feedback_aggregates), exactly as the summary the API serves."""
    records.feedback_aggregates()
    start = (datetime.now(UTC) - timedelta(days=days - 1)).date()
    since = datetime.combine(start, time.min, tzinfo=UTC)
    counts: dict[str, int] = defaultdict(int)
    for (created,) in records.session.execute(
        select(Feedback.created_at).where(Feedback.created_at >= since)
    ):
        counts[created.date().isoformat()] += 1
    return [
        ((start + timedelta(days=i)).isoformat(), counts.get((start + timedelta(days=i)).isoformat(), 0))
        for i in range(days)
    ]


def _validated(model: type, fields: dict[str, Any]):
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise Problem(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors) from exc


@router.get("")
def dashboard(request: Request, me: AdminUser, services: Services, done: str | None = None) -> Response:
    _ = translator(choose_language(request))
    with records_for(services, me) as records:
        aggregates = records.feedback_aggregates()
        daily = daily_feedback(records)
        adapters = [
            {
                "id": a.id,
                "plugin": a.plugin,
                "version": a.version,
                "status": a.status.value,
                "gate_passed": a.gate_passed,
                "promoted_at": a.promoted_at,
            }
            for a in records.list_adapters()
        ]
        jobs = [
            {"id": j.id, "plugin": j.plugin, "status": j.status.value, "created_at": j.created_at}
            for j in records.list_jobs(None, 20)
        ]
        users = [
            {
                "id": u.id,
                "name": u.name,
                "role": u.role.value,
                "disabled": u.disabled,
                "tokens": n,
                "patient_id": patient_id,
            }
            for u, n, patient_id in records.list_users()
        ]
    serving = services.model.info()
    kinds = sorted({a.kind for a in aggregates})
    groups: dict[str, dict[str, int]] = defaultdict(dict)
    for a in aggregates:
        groups[f"{a.plugin} {a.adapter_version}"][a.kind] = a.count
    bars = [Bar(label, values) for label, values in groups.items()]
    # The charts are markup built by serving.web.charts, which escapes every text it writes.
    versions_svg = grouped_bars(bars, kinds, title=_("admin.feedback.chart")) if bars else None
    charts = {
        "versions": Markup(versions_svg) if versions_svg else None,  # noqa: S704
        "daily": Markup(columns(daily, title=_("admin.feedback.daily"))),  # noqa: S704
    }
    plugins = sorted(serving.adapter_versions) if serving.adapter_versions else sorted(serving.plugins)
    return page(
        request,
        "admin/dashboard.html",
        me=me,
        aggregates=aggregates,
        charts=charts,
        adapters=adapters,
        serving=serving.adapter_versions,
        plugins=plugins,
        jobs=jobs,
        users=users,
        done=done,
        finetunes=services.finetunes is not None,
    )


@router.post("/finetunes")
async def start_finetune(request: Request, me: AdminUser, services: Services) -> Response:
    form = await checked_form(request)
    body = _validated(FineTuneCreate, {"plugin": form.get("plugin"), "method": form.get("method") or "all"})
    accepted = await run_in_threadpool(admin_routes.start_finetune, body, me, services)
    return RedirectResponse(f"{WEB_PREFIX}/admin/finetunes/{accepted.id}", status_code=303)


@router.get("/finetunes/{job_id}")
def job(request: Request, job_id: int, me: AdminUser, services: Services) -> Response:
    with records_for(services, me) as records:
        shown = admin_routes.get_finetune(job_id, me, records)
    history = services.backends.events.history(job_id)
    return page(request, "admin/job.html", me=me, job=shown, events=history)


@router.get("/finetunes/{job_id}/events")
def job_events(request: Request, job_id: int, me: AdminUser, services: Services) -> Response:
    """The page's EventSource: the API's own event stream for the job (live until it ends)."""
    answer = admin_routes.finetune_events(job_id, request, me, services)
    if isinstance(answer, Response):
        return answer
    raise Problem(406, "ask for text/event-stream")


@router.post("/adapters/{version}/promote")
async def promote(request: Request, version: str, me: AdminUser, services: Services) -> Response:
    form = await checked_form(request)
    body = _validated(
        PromoteRequest, {"reason": form.get("reason"), "override_gate": form.get("override_gate") == "on"}
    )
    done = await admin_routes.promote_adapter(version, body, me, services)
    return RedirectResponse(_done(f"{done.plugin} {done.version} ← {done.previous or '—'}"), status_code=303)


@router.post("/adapters/{plugin}/rollback")
async def rollback(request: Request, plugin: str, me: AdminUser, services: Services) -> Response:
    form = await checked_form(request)
    body = _validated(RollbackRequest, {"reason": form.get("reason")})
    done = await admin_routes.rollback_adapter(plugin, body, me, services)
    return RedirectResponse(_done(f"{done.plugin} {done.version} ← {done.previous or '—'}"), status_code=303)


@router.post("/finetunes/{job_id}/cancel")
async def cancel(request: Request, job_id: int, me: AdminUser, services: Services) -> Response:
    await checked_form(request)
    await run_in_threadpool(admin_routes.cancel_finetune, job_id, me, services)
    return RedirectResponse(f"{WEB_PREFIX}/admin/finetunes/{job_id}", status_code=303)


def _done(what: str) -> str:
    return f"{WEB_PREFIX}/admin?done={quote(what)}"
