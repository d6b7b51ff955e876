"""The records' care-team methods the admin pages use, and the study check of the viewer's slices, on
SQLite and PostgreSQL (no browser): who may call them, and what the audit log keeps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from memory.db import transaction
from memory.records import AccessDenied, Records
from memory.schema import AuditEntry
from memory.users import authenticate
from tests.agents.scenarios.conftest import auth


@contextmanager
def records_of(services, token: str) -> Iterator[Records]:
    """A transaction with the records as the token's holder sees them."""
    with transaction(services.sessions) as session:
        yield Records(session, authenticate(session, token))


def audit_rows(services, **where) -> list[AuditEntry]:
    with services.sessions() as session:
        query = select(AuditEntry).where(*(getattr(AuditEntry, k) == v for k, v in where.items()))
        return list(session.scalars(query.order_by(AuditEntry.seq)))


def test_an_admin_lists_and_removes_care_team_links(edge_api) -> None:
    client, people = edge_api
    services = client.app.state.services
    with records_of(services, people.admin) as records:
        links = records.list_care_teams()
        doe = links[0].physician_id
    assert [(link.physician, link.patient_id, link.patient_login) for link in links] == [
        ("dr_doe", people.pam_patient_id, "pam")
    ]
    with records_of(services, people.admin) as records:
        assert records.remove_from_care_team(doe, people.pam_patient_id) is True
        assert records.remove_from_care_team(doe, people.pam_patient_id) is False
        assert records.list_care_teams() == []
    changes = [e.detail for e in audit_rows(services, action="care_team.write", actor_role="admin")]
    assert [(d.get("change"), d.get("was_member")) for d in changes[-2:]] == [
        ("remove", True),
        ("remove", False),
    ]
    # The physician is refused from then on.
    assert (
        client.get(
            f"/v1/consultations?patient_id={people.pam_patient_id}", headers=auth(people.dr_doe)
        ).status_code
        == 404
    )


def test_only_admins_change_or_list_care_teams(edge_api) -> None:
    client, people = edge_api
    services = client.app.state.services
    for token in (people.dr_doe, people.pam):
        with pytest.raises(AccessDenied), records_of(services, token) as records:
            records.list_care_teams()
        with pytest.raises(AccessDenied), records_of(services, token) as records:
            records.remove_from_care_team(1, people.pam_patient_id)
    denied = audit_rows(services, resource="care_team", outcome="denied")
    assert {e.actor_role for e in denied} == {"physician", "patient"} and len(denied) == 4


def test_a_study_within_a_view_is_checked_but_not_audited_when_allowed(edge_api) -> None:
    client, people = edge_api
    services = client.app.state.services
    with open(get_testdata_file("CT_small.dcm"), "rb") as file:
        stored = client.post(
            "/v1/studies",
            data={"patient_id": str(people.pam_patient_id)},
            files={"file": ("ct.dcm", file.read(), "application/dicom")},
            headers=auth(people.dr_doe),
        )
    study_id = stored.json()["id"]
    before = len(audit_rows(services, resource="study", resource_id=str(study_id)))
    with records_of(services, people.dr_doe) as records:
        assert records.study_within_view(study_id).id == study_id
    assert len(audit_rows(services, resource="study", resource_id=str(study_id))) == before
    with pytest.raises(AccessDenied), records_of(services, people.dr_who) as records:
        records.study_within_view(study_id)
    (refused,) = audit_rows(services, resource="study", resource_id=str(study_id), outcome="denied")
    assert refused.actor_role == "physician" and refused.patient_id == people.pam_patient_id
