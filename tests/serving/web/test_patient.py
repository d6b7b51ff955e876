"""The patient's pages in chromium: streamed answers with the disclaimer and provenance, the escalation
banner, pictures and DICOM with a preview, feedback, and nothing of another patient by URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from memory.schema import AuditEntry
from tests.agents.scenarios.conftest import new_consultation, png
from tests.serving.web.conftest import shot, sign_in

pytestmark = pytest.mark.browser
RED_FLAG = "crushing chest pain spreading to my left arm, sweating, for 30 minutes"
# Rated `urgent` (same day) by the triage rules: `healthagent triage --json "..."` says so.
URGENT = "I think my ankle might be broken, it is swollen and I cannot walk on it"


def open_chat(context, web_app):
    page = sign_in(context, web_app.people.pam)
    page.get_by_test_id("consultation-new").click()
    page.wait_for_url("**/app/patient/consultations/*")
    return page


def send(page, message: str):
    page.get_by_test_id("chat-input").fill(message)
    with page.expect_response(lambda r: r.url.endswith("/messages")) as answered:
        page.get_by_test_id("chat-send").click()
    page.get_by_test_id("chat-disclaimer").last.wait_for(state="visible")
    return answered.value


def test_an_answer_streams_with_its_disclaimer_and_provenance(context, web_app) -> None:
    page = open_chat(context, web_app)
    response = send(page, "I have had a dry cough for a week")
    assert response.headers["content-type"].startswith("text/event-stream")
    answer_box = page.get_by_test_id("chat-answer").last
    assert int(answer_box.get_attribute("data-tokens") or 0) >= 1, "the answer came token by token"
    answer = answer_box.inner_text()
    assert answer and answer != "Thinking…"
    assert "not a diagnosis" in page.get_by_test_id("chat-disclaimer").last.inner_text()
    assert "adapter" in page.get_by_test_id("chat-provenance").last.inner_text()
    assert page.get_by_test_id("escalation-banner").count() == 0

    page.get_by_test_id("thumb-up").last.click()
    page.get_by_text("Thank you for the feedback.").wait_for()
    shot(page, "patient-chat")
    # After a reload the thread shows both messages, each answer with its disclaimer.
    page.reload()
    assert page.locator(".msg").count() == 2
    assert page.locator(".msg.assistant .disclaimer").count() == 1


def test_a_red_flag_shows_the_emergency_banner(context, web_app) -> None:
    page = open_chat(context, web_app)
    send(page, RED_FLAG)
    banner = page.get_by_test_id("escalation-banner")
    banner.wait_for(state="visible")
    assert "emergency" in banner.inner_text().lower()
    assert banner.evaluate("b => b === document.activeElement"), "the banner takes the focus"
    shot(page, "patient-escalation")
    page.reload()
    assert page.get_by_test_id("escalation-banner").is_visible(), "an escalated consultation keeps its banner"


def test_an_urgent_message_shows_the_same_day_banner(context, web_app) -> None:
    from tools.triage.levels import ADVICE

    page = open_chat(context, web_app)
    response = send(page, URGENT)
    assert response.ok
    banner = page.get_by_test_id("urgent-banner")
    banner.wait_for(state="visible")
    assert ADVICE["urgent"]["en"] in banner.inner_text(), "the same-day advice of the triage"
    assert banner.evaluate("b => b === document.activeElement"), "the banner takes the focus"
    assert page.get_by_test_id("escalation-banner").count() == 0, "urgent is not an emergency"
    assert page.get_by_test_id("chat-disclaimer").last.is_visible()
    shot(page, "patient-urgent")


def test_pictures_and_dicom_are_previewed_before_sending(context, web_app, tmp_path: Path) -> None:
    page = open_chat(context, web_app)
    picture = tmp_path / "rash.png"
    picture.write_bytes(png((200, 60, 60)))
    page.get_by_test_id("chat-file").set_input_files(str(picture))
    preview = page.get_by_test_id("upload-preview")
    preview.wait_for(state="visible")
    assert preview.get_attribute("src").startswith("blob:")
    assert preview.evaluate("img => img.complete && img.naturalWidth") == 48

    page.get_by_test_id("chat-file").set_input_files(get_testdata_file("CT_small.dcm"))
    page.wait_for_function(
        "() => { const i = document.querySelector('[data-testid=upload-preview]');"
        " return i.complete && i.naturalWidth === 128; }"
    )
    shot(page, "patient-dicom-preview")
    send(page, "What does this scan show?")
    assert page.locator(".msg.user img.attachment").count() == 1
    page.reload()
    shown = page.locator(".msg.user img.attachment").first
    assert shown.evaluate("img => img.complete && img.naturalWidth > 0"), "the stored picture is served back"


def test_another_patients_consultation_is_not_found_and_audited(context, web_app) -> None:
    theirs = new_consultation(web_app.client, web_app.people.pete)
    page = sign_in(context, web_app.people.pam)
    answer = page.goto(f"/app/patient/consultations/{theirs}")
    assert answer.status == 404
    assert page.get_by_test_id("problem-detail").inner_text() == "not found"
    assert page.goto(f"/app/patient/consultations/{theirs}/attachments/{'0' * 64}").status == 404
    assert page.goto("/app/physician").status == 403, "a patient has no worklist"
    with web_app.services.sessions() as session:
        denied = session.scalars(
            select(AuditEntry).where(AuditEntry.outcome == "denied", AuditEntry.resource_id == theirs)
        ).all()
    assert denied, "the attempt is in the audit log"


def test_signed_reads_page_lists_only_signed_reads(context, web_app) -> None:
    page = sign_in(context, web_app.people.pam, "/app/patient/reads")
    assert page.get_by_role("heading", level=1).inner_text() == "Your signed reads"
