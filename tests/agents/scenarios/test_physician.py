"""Physicians end to end through HTTP: a DICOM study, an AI second read, sign-off or correction."""

from __future__ import annotations

import io

import pydicom
from pydicom.data import get_testdata_file

from tests.agents.scenarios.conftest import auth


def ct_bytes(**header: str) -> bytes:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for name, value in header.items():
        setattr(dataset, name, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def upload_study(client, token: str, patient_id: int, data: bytes | None = None):
    return client.post(
        "/v1/studies",
        data={"patient_id": str(patient_id)},
        files={"file": ("ct.dcm", data or ct_bytes(), "application/dicom")},
        headers=auth(token),
    )


def test_a_study_is_de_identified_before_it_is_kept(api) -> None:
    client, people, _ = api
    response = upload_study(client, people.dr_doe, people.pam_patient_id)
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["modality"] == "CT" and study["patient_id"] == people.pam_patient_id
    kept = client.app.state.services.pixels.get(study["metadata"]["dicom_key"])
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    clean = pydicom.dcmread(io.BytesIO(kept))
    assert clean.PatientIdentityRemoved == "YES" and str(clean.PatientName) != str(original.PatientName)
    assert str(original.PatientName).encode() not in kept
    assert study["metadata"]["deidentification"]["pseudonym"]
    # Nobody outside the care team may add a study to Pam's record (told it does not exist).
    assert upload_study(client, people.dr_who, people.pam_patient_id).status_code == 404


def test_a_segmentation_or_dose_grid_is_not_taken_as_a_study(api) -> None:
    """Both carry pixel data, but a read would describe a label map or a dose grid as anatomy."""
    client, people, _ = api
    for name, kind in (("liver_1frame.dcm", "Segmentation"), ("rtdose.dcm", "RT Dose")):
        data = open(get_testdata_file(name), "rb").read()
        response = upload_study(client, people.dr_doe, people.pam_patient_id, data)
        assert response.status_code == 422, response.text
        assert kind in response.json()["detail"] and "not an image to read" in response.json()["detail"]


def test_second_read_stays_preliminary_until_signed(api) -> None:
    client, people, _ = api
    study = upload_study(client, people.dr_doe, people.pam_patient_id).json()
    drafted = client.post(f"/v1/studies/{study['id']}/reads", headers=auth(people.dr_doe))
    assert drafted.status_code == 201, drafted.text
    body = drafted.json()
    assert body["status"] == "awaiting_signoff" and body["route"] == "second_read" and body["read_id"]
    assert "Findings:" in body["answer"] and body["provenance"]["adapter_version"] == "tiny-seed0-v1"
    # Shown as what it is: preliminary, from demo weights, AI-written; the stored draft stays the model's.
    assert body["answer"].startswith("PRELIMINARY AI read") and "Demo model" in body["answer"]
    assert body["disclaimer"].startswith("This is AI-generated")
    read = client.get(f"/v1/reads/{body['read_id']}", headers=auth(people.dr_doe)).json()
    assert read["status"] == "preliminary" and read["physician_final"] is None
    assert read["notice"].startswith("Demo model") and "Demo model" not in read["ai_draft"]
    assert client.get(f"/v1/reads/{body['read_id']}", headers=auth(people.pam)).status_code == 404
    assert client.post(f"/v1/studies/{study['id']}/reads", headers=auth(people.pam)).status_code == 403
    # The thread waits for the sign-off: a message there would abandon the read, so it is refused.
    busy = client.post(
        f"/v1/consultations/{body['consultation_id']}/messages",
        json={"message": "hello?"},
        headers=auth(people.dr_doe),
    )
    assert busy.status_code == 409 and "sign-off" in busy.json()["detail"]

    signed = client.post(
        f"/v1/reads/{body['read_id']}/signoff", json={"action": "sign"}, headers=auth(people.dr_doe)
    )
    assert signed.status_code == 200, signed.text
    assert signed.json()["status"] == "answered" and "PRELIMINARY" not in signed.json()["answer"]
    final = client.get(f"/v1/reads/{body['read_id']}", headers=auth(people.pam)).json()
    assert final["status"] == "final" and final["physician_final"] == read["ai_draft"]
    assert final["ai_draft"] is None and final["notice"] is None  # the patient sees the signed text only
    again = client.post(
        f"/v1/reads/{body['read_id']}/signoff", json={"action": "sign"}, headers=auth(people.dr_doe)
    )
    assert again.status_code == 409


def test_a_correction_is_logged_as_feedback_with_the_adapter_version(api) -> None:
    client, people, _ = api
    study = upload_study(client, people.dr_doe, people.pam_patient_id).json()
    read_id = client.post(f"/v1/studies/{study['id']}/reads", headers=auth(people.dr_doe)).json()["read_id"]
    assert (
        client.post(
            f"/v1/reads/{read_id}/signoff", json={"action": "correct"}, headers=auth(people.dr_doe)
        ).status_code
        == 422
    )
    corrected = client.post(
        f"/v1/reads/{read_id}/signoff",
        headers=auth(people.dr_doe),
        json={"action": "correct", "text": "No acute findings. Small left effusion."},
    )
    assert corrected.status_code == 200, corrected.text
    read = client.get(f"/v1/reads/{read_id}", headers=auth(people.dr_doe)).json()
    assert (read["status"], read["physician_final"]) == ("final", "No acute findings. Small left effusion.")
    assert read["ai_draft"] and read["ai_draft"] != read["physician_final"]
    # The patient gets the corrected report, never the draft the physician overruled.
    shown = client.get(f"/v1/reads/{read_id}", headers=auth(people.pam)).json()
    assert shown["physician_final"] == read["physician_final"] and shown["ai_draft"] is None
    summary = client.get("/v1/admin/feedback/summary", headers=auth(people.admin)).json()
    assert {
        "plugin": "comprehension",
        "adapter_version": "tiny-seed0-v1",
        "kind": "correction",
        "count": 1,
    } in summary


def test_a_physician_outside_the_care_team_gets_nothing(api) -> None:
    client, people, _ = api
    study = upload_study(client, people.dr_doe, people.pam_patient_id).json()
    assert client.post(f"/v1/studies/{study['id']}/reads", headers=auth(people.dr_who)).status_code == 404
    read_id = client.post(f"/v1/studies/{study['id']}/reads", headers=auth(people.dr_doe)).json()["read_id"]
    denied = client.post(f"/v1/reads/{read_id}/signoff", json={"action": "sign"}, headers=auth(people.dr_who))
    assert denied.status_code == 404  # as for a missing read: outsiders cannot tell ids that exist
    assert client.get(f"/v1/reads/{read_id}", headers=auth(people.dr_doe)).json()["status"] == "preliminary"
