"""The admin's pages in chromium: feedback charts, adapters, starting a fine-tune and following it live,
promotion / rollback answered in words, users (created with a token shown once, tokens issued and
revoked) and care teams (a physician added and removed, audited)."""

from __future__ import annotations

import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from memory.schema import AuditEntry, User
from tests.agents.scenarios.conftest import auth, new_consultation, say
from tests.serving.web.conftest import shot, sign_in

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def rated(web_app) -> None:
    """A few answers rated through the API, so the charts have something to draw."""
    consultation = new_consultation(web_app.client, web_app.people.pam)
    for stars, text in ((5, "I have a mild headache"), (1, "my knee hurts when I climb stairs")):
        answer = say(web_app.client, web_app.people.pam, consultation, text).json()
        stored = web_app.client.post(
            "/v1/feedback",
            json={"message_id": answer["message_id"], "kind": "rating", "payload": {"stars": stars}},
            headers=auth(web_app.people.pam),
        )
        assert stored.status_code == 201, stored.text


def test_the_dashboard_draws_feedback_charts_and_lists_users(context, web_app, rated) -> None:
    page = sign_in(context, web_app.people.admin)
    page.wait_for_url("**/app/admin")
    chart = page.get_by_test_id("feedback-chart").locator("svg")
    assert chart.get_attribute("role") == "img" and "rating" in chart.inner_html()
    assert chart.locator("rect").count() >= 2
    assert page.get_by_test_id("feedback-daily").locator("svg rect").count() >= 30
    users = page.get_by_test_id("users").inner_text()
    assert "pam" in users and "dr_doe" in users
    shot(page, "admin-dashboard")


def test_a_fine_tune_with_too_little_feedback_is_refused_in_words(context, web_app, rated) -> None:
    """Two ratings are not a dataset: the form answers why at once, and no job is left to fail. (A job
    that starts, and the page that follows it live, are in test_finetune.py.)"""
    page = sign_in(context, web_app.people.admin)
    page.get_by_test_id("finetune-start").click()
    page.wait_for_load_state()
    detail = page.get_by_test_id("problem-detail").inner_text()
    assert "training rows for method 'all'" in detail and "min_examples" in detail, detail
    assert "Traceback" not in page.content()
    jobs = web_app.client.get("/v1/admin/finetunes", headers=auth(web_app.people.admin)).json()
    assert jobs == []
    shot(page, "admin-finetune-refused")


def test_rollback_and_promotion_answer_in_words(context, web_app) -> None:
    page = sign_in(context, web_app.people.admin)
    rollback = page.get_by_test_id("adapter-rollback").first
    plugin_reason = page.locator("[data-testid^=rollback-reason-]").first
    plugin_reason.fill("checking the rollback path")
    rollback.click()
    page.wait_for_load_state()
    # Either it rolled back, or it says why not (no earlier champion): words, never a trace.
    done = page.get_by_test_id("admin-done")
    if done.count() == 0:
        detail = page.get_by_test_id("problem-detail").inner_text()
        assert detail and "Traceback" not in page.content()
    # A reason is required by the form itself.
    page.goto("/app/admin")
    promote = page.get_by_test_id("adapter-promote")
    if promote.count():
        promote.first.click()
        assert page.url.endswith("/app/admin"), "an empty reason is not sent"


def _study_of_pam(web_app) -> int:
    with open(get_testdata_file("CT_small.dcm"), "rb") as file:
        data = file.read()
    stored = web_app.client.post(
        "/v1/studies",
        data={"patient_id": str(web_app.people.pam_patient_id)},
        files={"file": ("ct.dcm", data, "application/dicom")},
        headers=auth(web_app.people.dr_doe),
    )
    assert stored.status_code == 201, stored.text
    return stored.json()["id"]


def _audited(web_app, **where) -> list[AuditEntry]:
    with web_app.services.sessions() as session:
        query = select(AuditEntry).where(*(getattr(AuditEntry, k) == v for k, v in where.items()))
        return list(session.scalars(query.order_by(AuditEntry.seq)))


def test_users_and_care_teams_are_managed_in_the_browser(browser, context, web_app) -> None:
    admin = sign_in(context, web_app.people.admin)
    admin.get_by_test_id("user-name").fill("dr_new")
    admin.get_by_test_id("user-role").select_option("physician")
    with admin.expect_response(lambda r: r.url.endswith("/app/admin/users")) as created:
        admin.get_by_test_id("user-create-submit").click()
    assert created.value.headers["cache-control"] == "no-store", "the token page is never cached"
    token = admin.get_by_test_id("new-token").input_value()
    assert token.startswith("ha_")
    shot(admin, "admin-new-token")

    # The admin puts the new physician on Pam's care team; they then see her study.
    admin.goto("/app/admin")
    assert "dr_new" in admin.get_by_test_id("users").inner_text()
    admin.get_by_test_id("care-team-physician").select_option(label="dr_new")
    admin.get_by_test_id("care-team-patient").select_option(str(web_app.people.pam_patient_id))
    admin.get_by_test_id("care-team-add-submit").click()
    admin.wait_for_load_state()
    assert admin.get_by_test_id("admin-done").is_visible()
    assert admin.get_by_test_id("care-team-pam-dr_new").is_visible()
    assert admin.get_by_test_id("care-team-pam-dr_doe").is_visible()
    shot(admin, "admin-care-teams")

    study_id = _study_of_pam(web_app)
    doctor_context = browser.new_context(base_url=web_app.url, locale="en-GB")
    try:
        doctor = sign_in(doctor_context, token, f"/app/physician/studies/{study_id}")
        viewer = doctor.get_by_test_id("slice-viewer")
        viewer.wait_for(state="visible")
        with web_app.services.sessions() as session:
            dr_new = session.scalar(select(User.id).where(User.name == "dr_new"))

        # Taken off the care team: the viewer's next slice is refused (404) and the refusal audited.
        admin.get_by_test_id("care-team-pam-dr_new").get_by_test_id("care-team-remove").click()
        admin.wait_for_load_state()
        assert admin.get_by_test_id("care-team-pam-dr_new").count() == 0
        removal = _audited(web_app, action="care_team.write")[-1]
        assert removal.detail["change"] == "remove" and removal.actor_role == "admin"
        with doctor.expect_response(lambda r: "/slices/" in r.url) as refused:
            doctor.get_by_test_id("window-preset").select_option("bone")
        assert refused.value.status == 404
        denied = _audited(web_app, action="study.read", resource_id=str(study_id), outcome="denied")
        assert [e.actor_id for e in denied] == [dr_new]

        # A second token, then every token revoked: the physician's session ends with them.
        admin.get_by_test_id("user-dr_new").get_by_test_id("user-issue").click()
        assert admin.get_by_test_id("new-token").input_value().startswith("ha_")
        admin.goto("/app/admin")
        assert admin.get_by_test_id("user-dr_new").get_by_test_id("user-tokens").inner_text() == "3"
        admin.get_by_test_id("user-dr_new").get_by_test_id("user-revoke").click()
        admin.wait_for_load_state()
        assert "dr_new: 3 token(s) revoked" in admin.get_by_test_id("admin-done").inner_text()
        doctor.goto("/app/physician")
        assert "/app/sign-in" in doctor.url, "revoked: the physician is signed out"
    finally:
        doctor_context.close()


def test_care_team_changes_need_the_forms_csrf_token(context, web_app) -> None:
    admin = sign_in(context, web_app.people.admin)
    form = {"physician_id": "1", "patient_id": str(web_app.people.pam_patient_id)}
    assert admin.request.post("/app/admin/care-teams/remove", form=form).status == 403
    assert admin.request.post("/app/admin/users", form={"name": "x", "role": "admin"}).status == 403
    assert admin.get_by_test_id("care-team-pam-dr_doe").is_visible(), "nothing changed"
