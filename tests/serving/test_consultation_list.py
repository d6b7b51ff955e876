"""``GET /v1/consultations``: the caller's consultations under the records' access policy (issue 15)."""

from __future__ import annotations

from sqlalchemy import select

from memory.schema import AuditEntry
from tests.agents.scenarios.conftest import auth, new_consultation


def listed(client, token: str, **params):
    return client.get("/v1/consultations", params=params, headers=auth(token))


def test_a_patient_lists_their_own_newest_first(sqlite_api) -> None:
    client, people = sqlite_api
    first = new_consultation(client, people.pam)
    second = new_consultation(client, people.pam)
    new_consultation(client, people.pete)
    answer = listed(client, people.pam)
    assert answer.status_code == 200, answer.text
    rows = answer.json()
    assert [r["id"] for r in rows] == [second, first]
    assert set(rows[0]) == {"id", "patient_id", "status", "flag", "created_at", "closed_at"}
    assert rows[0]["patient_id"] == people.pam_patient_id and rows[0]["status"] == "open"
    assert rows[0]["created_at"].endswith("+00:00")
    assert [r["id"] for r in listed(client, people.pam, patient_id=people.pam_patient_id).json()] == [
        second,
        first,
    ]


def test_another_patients_list_is_not_found_and_audited(sqlite_api) -> None:
    client, people = sqlite_api
    new_consultation(client, people.pete)
    assert listed(client, people.pam, patient_id=people.pete_patient_id).status_code == 404
    assert listed(client, people.dr_doe, patient_id=people.pete_patient_id).status_code == 404
    with client.app.state.services.sessions() as session:
        denied = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "consultation.read",
                AuditEntry.outcome == "denied",
                AuditEntry.patient_id == people.pete_patient_id,
            )
        ).all()
    assert {e.actor_role for e in denied} == {"patient", "physician"}


def test_a_physician_lists_a_care_team_patients_and_admins_are_refused(sqlite_api) -> None:
    client, people = sqlite_api
    opened = new_consultation(client, people.pam)
    answer = listed(client, people.dr_doe, patient_id=people.pam_patient_id)
    assert answer.status_code == 200 and [r["id"] for r in answer.json()] == [opened]
    assert listed(client, people.dr_doe).status_code == 422, "a physician names the patient"
    assert listed(client, people.admin).status_code == 403
    assert listed(client, people.admin, patient_id=people.pam_patient_id).status_code == 403
    assert listed(client, people.pam, patient_id=0).status_code == 422
