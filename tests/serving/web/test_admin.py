"""The admin's pages in chromium: feedback charts, adapters, starting a fine-tune and following it live,
promotion / rollback answered in words, users."""

from __future__ import annotations

import pytest

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


def test_a_fine_tune_starts_and_its_progress_follows_live(context, web_app, rated) -> None:
    page = sign_in(context, web_app.people.admin)
    page.get_by_test_id("finetune-start").click()
    page.wait_for_url("**/app/admin/finetunes/*")
    assert page.get_by_test_id("finetune-progress").is_visible()
    # The page follows the job's event stream until the job ends (on this little feedback it ends soon:
    # trained and gated, or refused for too few examples), then reloads with the outcome.
    page.wait_for_function(
        "() => ['succeeded', 'rejected', 'failed', 'cancelled']"
        ".includes(document.querySelector('[data-testid=finetune-status]').textContent)",
        timeout=240_000,
    )
    assert page.get_by_test_id("finetune-events").locator("li").count() >= 1
    shot(page, "admin-finetune")


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
