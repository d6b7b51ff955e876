"""The admin's pages: feedback per adapter version (charts), adapters and what is served, fine-tunes
(start one, follow it live, read its gate report), promotion and rollback with a reason, users (create
one, issue or revoke tokens) and care teams (add or remove a physician).

Actions call the admin API's own route functions, or the records' methods the ``healthagent users`` CLI
calls, with the signed-in admin, so the checks, the audit and the answers are theirs; nothing here shows
patient data (patients are named by their login, as in the CLI)."""

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
from starlette.datastructures import FormData

from memory.records import Records
from memory.schema import Feedback, Role, User
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
        care_teams = records.list_care_teams()
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
        care_teams=care_teams,
        physicians=[u for u in users if u["role"] == Role.physician.value and not u["disabled"]],
        patients=[u for u in users if u["patient_id"] is not None],
        roles=[r.value for r in Role],
        done=done,
        finetunes=services.finetunes is not None,
    )


@router.post("/finetunes")
async def start_finetune(request: Request, me: AdminUser, services: Services) -> Response:
    form = await checked_form(request)
    fields = {"plugin": form.get("plugin"), "method": form.get("method") or "all"}
    if _text_field(form, "epochs"):  # empty: the settings' (or the preset's) number of epochs
        fields["epochs"] = _text_field(form, "epochs")
    body = _validated(FineTuneCreate, fields)
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


def _text_field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _id_field(form: FormData, name: str) -> int:
    value = _text_field(form, name)
    if not value.isdigit():
        raise Problem(422, f"{name}: choose one")
    return int(value)


def _token_page(request: Request, me: Principal, user: str, token: str, patient_id: int | None) -> Response:
    """A new token, shown this once (only its hash is kept): never cached, never in a URL."""
    shown = page(request, "admin/token.html", me=me, user=user, token=token, patient_id=patient_id)
    shown.headers["Cache-Control"] = "no-store"
    return shown


@router.post("/users")
async def create_user(request: Request, me: AdminUser, services: Services) -> Response:
    """A new user and their first token, as ``healthagent users add`` makes them (a patient also gets
    their patient record, named after the login)."""
    form = await checked_form(request)
    name = _text_field(form, "name")
    if not name:
        raise Problem(422, "name: a user needs a name")
    try:
        role = Role(_text_field(form, "role"))
    except ValueError as exc:
        raise Problem(422, "role: patient, physician or admin") from exc
    with records_for(services, me) as records:
        user, token = records.create_user(name, role)
        patient_id = records.create_patient(name, user.id).id if role is Role.patient else None
        created = user.name
    return _token_page(request, me, created, token, patient_id)


@router.post("/users/{user_id}/tokens")
async def issue_token(request: Request, user_id: int, me: AdminUser, services: Services) -> Response:
    """One more token for a user (a new device, a lost one replaced); their other tokens stay valid."""
    await checked_form(request)
    with records_for(services, me) as records:
        token = records.issue_token(user_id, label="issued in the admin pages")
        name = records.session.get(User, user_id).name  # issue_token found the user, or answered 404
    return _token_page(request, me, name, token, None)


@router.post("/users/{user_id}/revoke")
async def revoke_tokens(request: Request, user_id: int, me: AdminUser, services: Services) -> Response:
    """Every token of a user revoked (their browser sessions too): refused from their next request."""
    await checked_form(request)
    with records_for(services, me) as records:
        count = records.revoke_tokens(user_id)
        name = records.session.get(User, user_id).name
    return RedirectResponse(_done(f"{name}: {count} token(s) revoked"), status_code=303)


@router.post("/care-teams")
async def add_to_care_team(request: Request, me: AdminUser, services: Services) -> Response:
    form = await checked_form(request)
    physician_id, patient_id = _id_field(form, "physician_id"), _id_field(form, "patient_id")
    with records_for(services, me) as records:
        records.add_to_care_team(physician_id, patient_id)
        physician = records.session.get(User, physician_id).name  # add_to_care_team found them
    what = f"{physician} added to the care team of patient #{patient_id}"
    return RedirectResponse(_done(what), status_code=303)


@router.post("/care-teams/remove")
async def remove_from_care_team(request: Request, me: AdminUser, services: Services) -> Response:
    form = await checked_form(request)
    physician_id, patient_id = _id_field(form, "physician_id"), _id_field(form, "patient_id")
    with records_for(services, me) as records:
        removed = records.remove_from_care_team(physician_id, patient_id)
        found = records.session.get(User, physician_id)
    physician = found.name if found is not None else f"user {physician_id}"
    if not removed:
        raise Problem(404, f"{physician} is not on the care team of patient #{patient_id}")
    what = f"{physician} removed from the care team of patient #{patient_id}"
    return RedirectResponse(_done(what), status_code=303)
