"""The physician's pages in chromium: the worklist with red flags, uploading a study, the viewer (slices,
window presets, zoom; every slice of a series, one audit row per view, the slices a read cites), and
signing or correcting the AI read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from memory.schema import AuditEntry, Feedback
from tests.agents.scenarios.conftest import new_consultation, say
from tests.serving.web.conftest import shot, sign_in

pytestmark = pytest.mark.browser
FRAMES = 5


def multiframe_ct(path: Path) -> Path:
    """CT_small as a 5-slice volume (each slice a little brighter), for scrolling."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = ds.pixel_array.astype(np.int16)
    volume = np.stack([base + 40 * i for i in range(FRAMES)])
    ds.NumberOfFrames = FRAMES
    ds.PixelData = volume.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def open_uploaded_study(context, web_app, tmp_path: Path):
    page = sign_in(context, web_app.people.dr_doe)
    page.get_by_label("Patient", exact=True).select_option(str(web_app.people.pam_patient_id))
    page.get_by_test_id("study-file").set_input_files(str(multiframe_ct(tmp_path / "ct5.dcm")))
    page.get_by_test_id("study-upload").click()
    page.wait_for_url("**/app/physician/studies/*")
    page.get_by_test_id("slice-viewer").wait_for(state="visible")
    return page


def image_bytes(page) -> bytes:
    viewer = page.get_by_test_id("slice-viewer")
    page.wait_for_function("() => { const i = document.querySelector('[data-testid=slice-viewer]');"
                           " return i.complete && i.naturalWidth > 0; }")  # fmt: skip
    return page.request.get(viewer.get_attribute("src")).body()


def test_the_viewer_scrolls_slices_and_changes_the_window(context, web_app, tmp_path: Path) -> None:
    page = open_uploaded_study(context, web_app, tmp_path)
    viewer = page.get_by_test_id("slice-viewer")
    assert f"/slices/{(FRAMES + 1) // 2}?preset=default&view=" in viewer.get_attribute("src")
    default = image_bytes(page)

    page.get_by_test_id("window-preset").select_option("lung")
    assert "preset=lung&view=" in viewer.get_attribute("src")
    lung = image_bytes(page)
    assert lung != default, "another window renders another picture"

    viewer.focus()
    page.keyboard.press("ArrowUp")
    assert f"/slices/{(FRAMES + 1) // 2 + 1}?" in viewer.get_attribute("src")
    assert image_bytes(page) != lung, "the next slice is another picture"
    page.keyboard.press("+")
    assert "scale(1.25)" in viewer.evaluate("i => i.style.transform")
    shot(page, "physician-viewer")

    # Dragging sets an explicit window.
    box = viewer.bounding_box()
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*middle)
    page.mouse.down()
    page.mouse.move(middle[0] + 60, middle[1] + 30)
    page.mouse.up()
    assert "c=" in viewer.get_attribute("src") and "w=" in viewer.get_attribute("src")
    image_bytes(page)


def test_the_ai_read_is_signed_and_a_correction_becomes_feedback(context, web_app, tmp_path: Path) -> None:
    page = open_uploaded_study(context, web_app, tmp_path)
    page.get_by_test_id("read-request").click()
    page.wait_for_load_state()
    draft = page.get_by_test_id("read-draft").first
    assert draft.inner_text().strip()
    assert page.get_by_test_id("read-status").first.inner_text() == "PRELIMINARY"
    shot(page, "physician-read")
    page.get_by_test_id("read-sign").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("read-status").first.inner_text() == "FINAL"

    page.get_by_test_id("read-request").click()
    page.wait_for_load_state()
    page.get_by_test_id("read-correction").fill("No acute findings. Corrected by the physician.")
    page.get_by_test_id("read-correct").click()
    page.wait_for_load_state()
    corrected = "No acute findings. Corrected by the physician."
    assert page.get_by_test_id("read-final").last.inner_text() == corrected
    with web_app.services.sessions() as session:
        kinds = session.scalars(select(Feedback.kind).where(Feedback.target_read_id.is_not(None))).all()
    assert "correction" in [str(k) for k in kinds], "a correction is kept as feedback"

    # The patient sees their signed reads.
    patient = context.browser.new_context(base_url=web_app.url)
    try:
        reads = sign_in(patient, web_app.people.pam, "/app/patient/reads")
        assert "Corrected by the physician" in reads.get_by_test_id("signed-reads").inner_text()
    finally:
        patient.close()


def test_the_worklist_shows_studies_and_red_flags(context, web_app) -> None:
    consultation = new_consultation(web_app.client, web_app.people.pam)
    say(web_app.client, web_app.people.pam, consultation, "crushing chest pain and sweating for 30 minutes")
    page = sign_in(context, web_app.people.dr_doe)
    notes = page.get_by_test_id("notifications")
    assert "red_flag" in notes.inner_text()
    assert page.get_by_test_id("worklist").is_visible()
    shot(page, "physician-worklist")
    page.get_by_role("link", name="Pam Example").first.click()
    page.wait_for_url("**/app/physician/patients/*")
    assert "crushing chest pain" in page.get_by_test_id("history-consultations").inner_text()


def test_a_study_outside_the_care_team_is_not_found(context, web_app, tmp_path: Path) -> None:
    page = open_uploaded_study(context, web_app, tmp_path)
    study_path = page.url.split("/app", 1)[1]
    other = context.browser.new_context(base_url=web_app.url)
    try:
        outsider = sign_in(other, web_app.people.dr_who)
        assert outsider.goto("/app" + study_path).status == 404
        study_id = int(study_path.rsplit("/", 1)[1])
        denied = slice_reads_audited(web_app, study_id, "denied")
        # Even with the owner's view ticket: it is bound to their session, and access is checked anyway.
        ticket = page.get_by_test_id("slice-viewer").get_attribute("src").split("view=", 1)[1]
        assert outsider.goto(f"/app{study_path}/slices/1?preset=bone&view={ticket}").status == 404
        assert slice_reads_audited(web_app, study_id, "denied") == denied + 1, "the refusal is audited"
    finally:
        other.close()


SERIES = 6


def imported_series(web_app) -> int:
    """A CT series of SERIES single-slice instances taken in as a PACS import takes it (without the
    PACS: the same intake, ``serving.turns.ingest_series``): the study id."""
    from memory.users import authenticate
    from serving.turns import Upload, ingest_series

    uploads = []
    for index in reversed(range(SERIES)):  # sent out of order: the intake puts them in anatomical order
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = index + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * index]
        ds.PixelData = (ds.pixel_array.astype(np.int16) + 60 * index).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer)
        uploads.append(Upload(name=f"ct{index}.dcm", data=buffer.getvalue()))
    with web_app.services.sessions() as session:
        doctor = authenticate(session, web_app.people.dr_doe)
    stored = ingest_series(web_app.services, doctor, web_app.people.pam_patient_id, uploads)
    return stored.id


def slice_reads_audited(web_app, study_id: int, outcome: str = "allowed") -> int:
    with web_app.services.sessions() as session:
        return len(
            session.scalars(
                select(AuditEntry).where(
                    AuditEntry.action == "study.read",
                    AuditEntry.resource_id == str(study_id),
                    AuditEntry.outcome == outcome,
                )
            ).all()
        )


def test_every_slice_of_an_imported_series_is_shown_and_audited_once(context, web_app) -> None:
    study_id = imported_series(web_app)
    page = sign_in(context, web_app.people.dr_doe, f"/app/physician/studies/{study_id}")
    viewer = page.get_by_test_id("slice-viewer")
    viewer.wait_for(state="visible")
    assert page.get_by_test_id("slice-scroll").get_attribute("max") == str(SERIES), "every instance"
    assert page.get_by_test_id("slice-label").inner_text() == f"{(SERIES + 1) // 2} of {SERIES}"
    opened = slice_reads_audited(web_app, study_id)
    assert opened >= 1, "opening the viewer is an audited read of the study"

    seen = {image_bytes(page)}
    viewer.focus()
    for _ in range(SERIES):  # scroll down to the first slice, then up through the whole series
        page.keyboard.press("ArrowDown")
    for number in range(1, SERIES + 1):
        assert f"/slices/{number}?" in viewer.get_attribute("src")
        seen.add(image_bytes(page))
        page.keyboard.press("ArrowUp")
    assert len(seen) == SERIES, "each instance is its own picture"
    shot(page, "physician-series")
    assert slice_reads_audited(web_app, study_id) == opened, "scrolling adds no audit row per picture"
    # A slice asked for outside the viewer's view (no ticket) is audited like any read of the study.
    assert page.request.get(f"/app/physician/studies/{study_id}/slices/1?preset=bone").ok
    assert slice_reads_audited(web_app, study_id) == opened + 1


def test_a_series_read_links_to_the_slices_it_cites(context, web_app) -> None:
    study_id = imported_series(web_app)
    page = sign_in(context, web_app.people.dr_doe, f"/app/physician/studies/{study_id}")
    page.get_by_test_id("read-request").click()
    page.wait_for_load_state()
    links = page.get_by_test_id("read-slice")
    cited = [int(n) for n in links.all_inner_texts()]
    assert cited[0] == 1 and cited[-1] == SERIES and len(cited) >= 2, cited
    viewer = page.get_by_test_id("slice-viewer")
    links.first.click()  # jumps on this page, no reload
    assert page.get_by_test_id("slice-scroll").input_value() == "1"
    assert "/slices/1?" in viewer.get_attribute("src")
    assert viewer.evaluate("i => i === document.activeElement"), "the picture takes the focus"
    shot(page, "physician-cited-slices")
    # From elsewhere (the patient's history) the same links open the viewer at that slice.
    page.goto(f"/app/physician/patients/{web_app.people.pam_patient_id}")
    page.locator(f"a[data-slice='{SERIES}'][href*='/studies/{study_id}?']").first.click()
    page.wait_for_url(f"**/app/physician/studies/{study_id}?slice={SERIES}")
    assert page.get_by_test_id("slice-scroll").input_value() == str(SERIES)
    assert f"/slices/{SERIES}?" in page.get_by_test_id("slice-viewer").get_attribute("src")
