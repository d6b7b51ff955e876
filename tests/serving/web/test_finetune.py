"""The admin's refresh in chromium, for real: physicians' corrections → a fine-tune started on the page
that trains, passes its gate and is followed live → promoted with a reason → the patient's next answer
names the new adapter version → rolled back → the next answer names the old one again.

Its own app and model (a promotion loads adapters into the model), with the coloured pictures and the
settings of tests/serving/test_finetune_jobs.py, so that the tiny model learns its rows and the gate's
checks are real signals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.healthgpt import HealthGPT
from serving.services import prepare_database
from tests.agents.scenarios.conftest import make_people, start
from tests.serving.test_finetune_jobs import (
    FINDINGS,
    PLUGIN,
    QUESTION,
    correct_reads,
    png,
    settings_for,
    shade,
)
from tests.serving.web.conftest import WebApp, hosted, shot, sign_in
from tools.finetune.vqa import freeze_regression_set

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_thread")]


def colour_regression_set(root: Path) -> Path:
    """The frozen multiple-choice set the gate checks (one question per colour)."""
    root.mkdir(parents=True)
    items = []
    for index, colour in enumerate(FINDINGS):
        (root / f"{index}.png").write_bytes(png(shade(colour, 9)))
        items.append({"id": f"c{index}", "question": QUESTION, "choices": list(FINDINGS.values()),
                      "answer": index, "image": f"{index}.png"})  # fmt: skip
    (root / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    freeze_regression_set(root, name="colours", description="web test set", synthetic=True)
    return root


@pytest.fixture(scope="module")
def tuning_app(tmp_path_factory: pytest.TempPathFactory, tiny_spec) -> Iterator[WebApp]:
    data = tmp_path_factory.mktemp("web-tune")
    settings = settings_for(data, f"sqlite:///{data / 'web.db'}", colour_regression_set(data / "regression"))
    prepare_database(settings).dispose()
    client, services = start(settings, HealthGPT(tiny_spec.model_copy(deep=True)))
    with hosted(client, services, make_people(services)) as app:
        yield app


@pytest.fixture
def tuning_context(browser, tuning_app: WebApp):
    made = browser.new_context(
        base_url=tuning_app.url, locale="en-GB", viewport={"width": 1200, "height": 900}
    )
    made.set_default_timeout(30_000)
    yield made
    made.close()


def answer_provenance(browser, app: WebApp) -> str:
    """The patient asks in a new consultation (their own browser profile): their answer's provenance."""
    context = browser.new_context(base_url=app.url, locale="en-GB")
    try:
        page = sign_in(context, app.people.pam)
        page.get_by_test_id("consultation-new").click()
        page.wait_for_url("**/app/patient/consultations/*")
        page.get_by_test_id("chat-input").fill("I have a mild cough.")
        page.get_by_test_id("chat-send").click()
        provenance = page.get_by_test_id("chat-provenance").last
        provenance.wait_for(state="visible")
        return provenance.inner_text()
    finally:
        context.close()


def submit_with_reason(page, action: str, key: str, reason: str) -> None:
    """Fill the reason of the admin page's ``action`` form for ``key`` (a version or a plugin) and send it."""
    page.get_by_test_id(f"{action}-reason-{key}").fill(reason)
    page.locator(f"form:has([data-testid='{action}-reason-{key}']) [data-testid=adapter-{action}]").click()
    page.wait_for_load_state()


def test_a_fine_tune_succeeds_is_promoted_then_rolled_back(browser, tuning_context, tuning_app) -> None:
    app = tuning_app
    base = app.services.model.info().adapter_versions[PLUGIN]
    correct_reads(app.services, app.people)  # a dozen physicians' corrections of the champion's reads
    assert f"adapter {base}," in answer_provenance(browser, app)

    admin = sign_in(tuning_context, app.people.admin)
    admin.get_by_label("Plugin", exact=True).select_option(PLUGIN)
    admin.get_by_test_id("finetune-epochs").fill("40")  # enough for the tiny model to learn its rows
    admin.get_by_test_id("finetune-start").click()
    admin.wait_for_url("**/app/admin/finetunes/*")
    # The page follows the job's events (progress moves the bar) and reloads with the gate report.
    admin.get_by_test_id("gate-report").wait_for(timeout=300_000)
    assert admin.get_by_test_id("finetune-status").inner_text() == "succeeded"
    bar = admin.get_by_test_id("finetune-progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") != "1"
    assert admin.get_by_role("heading", name="Gate report: yes").is_visible()
    events = admin.get_by_test_id("finetune-events").inner_text()
    assert "progress" in events and "evaluating" in events and "succeeded" in events
    shot(admin, "admin-finetune-succeeded")
    candidate = admin.get_by_test_id("candidate-version").inner_text()
    assert candidate and candidate != base

    # Promoted with a reason: the next answer's provenance names the new version.
    admin.goto("/app/admin")
    submit_with_reason(admin, "promote", candidate, "better on the physicians' corrections")
    assert f"{PLUGIN} {candidate} ← {base}" in admin.get_by_test_id("admin-done").inner_text()
    shot(admin, "admin-promoted")
    assert f"adapter {candidate}," in answer_provenance(browser, app)

    # Rolled back with a reason: the old champion answers again.
    submit_with_reason(admin, "rollback", PLUGIN, "drill")
    assert f"{PLUGIN} {base} ← {candidate}" in admin.get_by_test_id("admin-done").inner_text()
    assert f"adapter {base}," in answer_provenance(browser, app)
