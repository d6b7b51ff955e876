"""Images generated from a study, over HTTP on a real Orthanc, on SQLite and PostgreSQL: a physician of the
care team generates one from a study imported from the PACS, it stays preliminary, accepting it stores a
Secondary Capture in the ORIGINAL study (referencing the source instance), rejecting it pushes nothing,
an upload has nothing to return to, and a capture accepted while the PACS is away waits in the outbox
until it is back. Patients and other physicians reach nothing they may not (404, audited)."""

from __future__ import annotations

import io
import time
import typing

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sqlalchemy import select

from memory.audit import AuditEntry
from serving.api.schemas import SourceImageTask
from tests.agents.scenarios.conftest import auth
from tests.serving import test_pacs_workflow as workflow
from tests.serving.test_pacs_workflow import _pacs, ct_series, import_series
from tests.tools.conftest import OrthancServer
from tools.healthgpt import ImageTask
from tools.pacs import SECONDARY_CAPTURE

pytestmark = pytest.mark.services
# The workflow's fixtures: an Orthanc of this module's own (the fault test stops it), the API wired to it.
orthanc, api = workflow.orthanc, workflow.api
SLICES = 6  # read_slices 4 of 6 are slices 1, 3, 4, 6; the key slice is 4; slice 2 is rendered on demand


def imported(client, people, orthanc: OrthancServer) -> tuple[list[Dataset], int]:
    series = ct_series(SLICES)
    with _pacs(orthanc) as pacs:
        pacs.store(series)
    return series, import_series(client, people, series)["id"]


def generate(client, people, study_id: int, **body) -> dict:
    answer = client.post(f"/v1/studies/{study_id}/images", json=body, headers=auth(people.dr_doe))
    assert answer.status_code == 201, answer.text
    return answer.json()


def review(client, people, image: dict, action: str, **extra) -> dict:
    url = f"{image['url']}/review"
    answer = client.post(url, json={"action": action, **extra}, headers=auth(people.dr_doe))
    assert answer.status_code == 200, answer.text
    return answer.json()


def captures(orthanc: OrthancServer, study_uid: str) -> list[Dataset]:
    with _pacs(orthanc) as pacs:
        return [ds for ds in pacs.retrieve_study(study_uid) if ds.SOPClassUID == SECONDARY_CAPTURE]


def denied_rows(client) -> list[AuditEntry]:
    with client.app.state.services.sessions() as session:
        query = select(AuditEntry).where(AuditEntry.resource == "derived_image")
        return list(session.scalars(query.where(AuditEntry.outcome == "denied")))


def test_the_tasks_offered_are_those_that_take_a_source_image() -> None:
    assert set(typing.get_args(SourceImageTask)) == {t.value for t in ImageTask} - {"text_to_image"}


def test_generate_accept_and_the_capture_lands_in_the_original_study(api, orthanc: OrthancServer) -> None:
    client, people, _ = api
    series, study_id = imported(client, people, orthanc)
    study_uid = series[0].StudyInstanceUID

    image = generate(client, people, study_id, task="ct_to_mri")
    assert image["status"] == "preliminary" and image["pacs"] is None
    assert image["task"] == "ct_to_mri" and image["source_slice"] == SLICES // 2 + 1
    provenance = image["provenance"]
    assert provenance["plugin"] == "generation" and provenance["model"] and provenance["adapter_version"]
    assert image["url"] == f"/v1/studies/{study_id}/images/{image['id']}"

    png = client.get(image["url"], headers=auth(people.dr_doe))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(png.content))
    record = client.get(image["url"], headers={**auth(people.dr_doe), "Accept": "application/json"})
    assert record.json()["id"] == image["id"]

    # AI output stays with the care team until accepted; nothing of it reaches the PACS before then.
    assert client.get(image["url"], headers=auth(people.pam)).status_code == 404
    assert client.get(image["url"], headers=auth(people.dr_who)).status_code == 404
    body = {"action": "accept"}
    assert client.post(f"{image['url']}/review", json=body, headers=auth(people.pam)).status_code == 403
    assert client.post(f"{image['url']}/review", json=body, headers=auth(people.dr_who)).status_code == 404
    assert client.post(f"/v1/studies/{study_id}/images", json={"task": "reconstruction"},
                       headers=auth(people.pam)).status_code == 403  # fmt: skip
    assert client.post(f"/v1/studies/{study_id}/images", json={"task": "reconstruction"},
                       headers=auth(people.dr_who)).status_code == 404  # fmt: skip
    assert len(denied_rows(client)) >= 3
    assert captures(orthanc, study_uid) == []

    accepted = review(client, people, image, "accept")
    assert accepted["status"] == "accepted" and accepted["reviewed_by"] is not None
    assert accepted["pacs"]["status"] in ("delivered", "pending")  # pending: the PACS was slow at once
    as_json = {**auth(people.dr_doe), "Accept": "application/json"}
    accepted = workflow.until_delivered(
        lambda: client.get(image["url"], headers=as_json).json(), lambda shown: shown["pacs"]["status"]
    )
    assert accepted["pacs"]["status"] == "delivered", accepted["pacs"]
    (capture,) = captures(orthanc, study_uid)
    assert capture.SOPInstanceUID == accepted["pacs"]["sop_instance_uid"]
    assert capture.StudyInstanceUID == study_uid and capture.PatientID == series[0].PatientID
    assert capture.Modality == "OT" and capture.ConversionType == "SYN"
    assert capture.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in series}
    assert capture.ImageType[0] == "DERIVED"
    assert "CT-to-MRI conversion" in capture.DerivationDescription
    assert provenance["model"] in capture.DerivationDescription
    assert provenance["adapter_version"] in capture.DerivationDescription
    source = series[image["source_slice"] - 1]  # the ORIGINAL instance of the slice it came from
    for sequence in (capture.SourceImageSequence, capture.ReferencedImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert (capture.Rows, capture.Columns) == (picture.height, picture.width)

    # Accepted: the patient may see it; a second verdict is refused.
    assert client.get(image["url"], headers=auth(people.pam)).status_code == 200
    again = client.post(f"{image['url']}/review", json={"action": "reject"}, headers=auth(people.dr_doe))
    assert again.status_code == 409

    # Another slice, rendered from the de-identified series; rejected: nothing goes to the PACS.
    other = generate(client, people, study_id, task="super_resolution", slice=2)
    assert other["source_slice"] == 2
    rejected = review(client, people, other, "reject", reason="artefacts")
    assert rejected["status"] == "rejected" and rejected["review_reason"] == "artefacts"
    assert rejected["pacs"] is None
    time.sleep(0.5)  # the worker polls meanwhile: still nothing new
    assert len(captures(orthanc, study_uid)) == 1
    assert client.get(other["url"], headers=auth(people.pam)).status_code == 404

    bad = client.post(f"/v1/studies/{study_id}/images", json={"task": "ct_to_mri", "slice": SLICES + 1},
                      headers=auth(people.dr_doe))  # fmt: skip
    assert bad.status_code == 422
    text_only = client.post(f"/v1/studies/{study_id}/images", json={"task": "text_to_image"},
                            headers=auth(people.dr_doe))  # fmt: skip
    assert text_only.status_code == 422
    # A conversion from the other modality than the study's is refused, naming both.
    wrong = client.post(
        f"/v1/studies/{study_id}/images", json={"task": "mri_to_ct"}, headers=auth(people.dr_doe)
    )
    assert (
        wrong.status_code == 422
        and wrong.json()["detail"] == "task: mri_to_ct converts an MRI; this study is CT"
    )


def test_an_uploaded_study_is_accepted_with_nothing_to_push(api) -> None:
    client, people, _ = api
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    upload = client.post(
        "/v1/studies",
        data={"patient_id": str(people.pam_patient_id)},
        files={"file": ("ct.dcm", buffer.getvalue(), "application/dicom")},
        headers=auth(people.dr_doe),
    )
    assert upload.status_code == 201, upload.text
    image = generate(client, people, upload.json()["id"], task="reconstruction")
    assert image["source_slice"] == 1
    accepted = review(client, people, image, "accept")
    assert accepted["status"] == "accepted" and accepted["pacs"] == {
        "status": "not_from_pacs",
        "attempts": 0,
        "sop_instance_uid": None,
        "last_error": "",
    }


def test_a_capture_accepted_while_the_pacs_is_away_waits_then_arrives(api, orthanc: OrthancServer) -> None:
    client, people, _ = api
    series, study_id = imported(client, people, orthanc)
    image = generate(client, people, study_id, task="reconstruction")
    orthanc.stop()
    try:
        accepted = review(client, people, image, "accept")
        assert accepted["pacs"]["status"] == "pending"
        time.sleep(0.6)  # the worker retries meanwhile, and fails
        shown = client.get(image["url"], headers={**auth(people.dr_doe), "Accept": "application/json"}).json()
        assert shown["pacs"]["status"] == "pending" and shown["pacs"]["attempts"] >= 2
        assert shown["pacs"]["last_error"] and "127.0.0.1" not in shown["pacs"]["last_error"]
        uid = shown["pacs"]["sop_instance_uid"]
    finally:
        orthanc.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shown = client.get(image["url"], headers={**auth(people.dr_doe), "Accept": "application/json"}).json()
        if shown["pacs"]["status"] == "delivered":
            break
        time.sleep(0.2)
    assert shown["pacs"]["status"] == "delivered" and shown["pacs"]["sop_instance_uid"] == uid
    (capture,) = captures(orthanc, series[0].StudyInstanceUID)  # one instance, the same UID every try
    assert capture.SOPInstanceUID == uid
