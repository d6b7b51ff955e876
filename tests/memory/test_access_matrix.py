"""The access policy, cell by cell, through the real repositories on SQLite and PostgreSQL.

Each cell is (role, own/other patient, resource, action). The expected outcome is written out here
by hand - not derived from the policy code - and every cell is exercised by a real repository call
whose outcome (allowed, or AccessDenied + a 'denied' audit row) is asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from memory.db import make_engine, make_session_factory, transaction
from memory.migrate import upgrade
from memory.records import AccessDenied, Records
from memory.schema import AdapterStatus, AuditEntry, CareTeamMember, Role
from memory.users import Principal

_PROVENANCE = {"model": "m", "plugin": "comprehension", "adapter_version": "v1"}


@dataclass
class World:
    sessions: object
    actors: dict[str, Principal]  # "patient", "physician", "admin"
    own: dict[str, int]  # ids belonging to the patient the actor relates to
    other: dict[str, int]  # ids of a patient the actor has no relation with


def _build_world(sessions) -> World:
    root = Principal(user_id=0, name="setup", role=Role.admin)
    with transaction(sessions) as session:
        records = Records(session, root)
        users = {}
        for name, role in (
            ("admin", Role.admin),
            ("doc", Role.physician),
            ("ann", Role.patient),
            ("bob", Role.patient),
        ):
            users[name], _ = records.create_user(name, role)
        patients = {
            name: records.create_patient(f"{name.title()} X.", users[name].id).id for name in ("ann", "bob")
        }
        for patient_id in patients.values():  # the physician builds both records, then keeps only Ann
            records.add_to_care_team(users["doc"].id, patient_id)
    doc = Principal(users["doc"].id, "doc", Role.physician)
    ids: dict[str, dict[str, int]] = {}
    with transaction(sessions) as session:
        records = Records(session, doc)
        for name, patient_id in patients.items():
            consultation = records.open_consultation(f"c-{name}", patient_id)
            message = records.add_message(consultation.id, "assistant", "answer", provenance=_PROVENANCE)
            study = records.add_study(patient_id, modality="CT")
            signed = records.add_read(study.id, "draft", _PROVENANCE)
            records.sign_read(signed.id, "final text")
            draft = records.add_read(study.id, "draft 2", _PROVENANCE)
            ids[name] = {"patient": patient_id, "consultation": consultation.id, "message": message.id,
                         "study": study.id, "read": signed.id, "draft": draft.id}  # fmt: skip
        session.delete(session.get(CareTeamMember, (users["doc"].id, patients["bob"])))
    actors = {
        "patient": Principal(users["ann"].id, "ann", Role.patient),
        "physician": doc,
        "admin": Principal(users["admin"].id, "admin", Role.admin),
    }
    return World(sessions, actors, ids["ann"], ids["bob"])


@pytest.fixture
def world(database_url: str):
    engine = make_engine(database_url)
    upgrade(engine)
    yield _build_world(make_session_factory(engine))
    engine.dispose()


Operation = Callable[[Records, dict[str, int]], object]

# resource, action -> the repository call that performs it on a patient's records.
PATIENT_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("patient", "read"): lambda r, t: r.get_patient(t["patient"]),
    ("patient", "write"): lambda r, t: r.update_patient(t["patient"], "Renamed"),
    ("consultation", "read"): lambda r, t: r.get_consultation(t["consultation"]),
    ("consultation", "write"): lambda r, t: r.open_consultation(f"new-{t['patient']}", t["patient"]),
    ("message", "read"): lambda r, t: r.list_messages(t["consultation"]),
    ("message", "write"): lambda r, t: r.add_message(t["consultation"], "patient", "hello"),
    ("study", "read"): lambda r, t: r.get_study(t["study"]),
    ("study", "write"): lambda r, t: r.add_study(t["patient"], modality="MR"),
    ("read", "read"): lambda r, t: r.get_read(t["read"]),
    ("read", "write"): lambda r, t: r.add_read(t["study"], "ai draft", _PROVENANCE),
    ("read", "sign"): lambda r, t: r.sign_read(t["draft"], "signed"),
    ("feedback", "read"): lambda r, t: r.list_feedback(t["patient"]),
    ("feedback", "write"): lambda r, t: r.add_feedback("rating", {"stars": 4}, message_id=t["message"]),
}
ADMIN_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("feedback_aggregate", "read"): lambda r, t: r.feedback_aggregates(),
    ("adapter", "read"): lambda r, t: r.list_adapters(),
    ("adapter", "write"): lambda r, t: r.register_adapter("comprehension", "v-matrix", ["a.safetensors"]),
    ("job", "write"): lambda r, t: r.create_job("comprehension", {"epochs": 1}),
    ("audit", "read"): lambda r, t: r.verify_audit(),
    ("user", "write"): lambda r, t: r.create_user("someone-new", Role.patient),
    ("care_team", "write"): lambda r, t: r.add_to_care_team(t["physician_id"], t["patient"]),
}

# The expected matrix, by hand. Patient data: (role, relation) -> allowed (resource, action) cells.
ALLOWED_PATIENT_DATA = {
    ("patient", "own"): {
        ("patient", "read"),
        ("consultation", "read"),
        ("consultation", "write"),
        ("message", "read"),
        ("message", "write"),
        ("study", "read"),
        ("study", "write"),
        ("read", "read"),
        ("feedback", "read"),
        ("feedback", "write"),
    },
    ("patient", "other"): set(),
    ("physician", "own"): set(PATIENT_OPERATIONS),  # everything, signing included
    ("physician", "other"): set(),
    ("admin", "own"): set(),  # no PHI for admins by default
    ("admin", "other"): set(),
}
ALLOWED_ADMIN = {"patient": set(), "physician": set(), "admin": set(ADMIN_OPERATIONS)}

CELLS = [
    (role, relation, resource, action)
    for role in ("patient", "physician", "admin")
    for relation in ("own", "other")
    for resource, action in PATIENT_OPERATIONS
]


def _denials(sessions) -> int:
    with sessions() as session:
        return session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.outcome == "denied")
        )


def _attempt(world: World, role: str, operation: Operation, target: dict[str, int]) -> bool:
    before = _denials(world.sessions)
    try:
        with transaction(world.sessions) as session:
            operation(Records(session, world.actors[role]), target)
    except AccessDenied:
        assert _denials(world.sessions) == before + 1, "a denial must leave a 'denied' audit row"
        return False
    return True


@pytest.mark.parametrize(("role", "relation", "resource", "action"), CELLS)
def test_patient_data_cell(world: World, role: str, relation: str, resource: str, action: str) -> None:
    target = world.own if relation == "own" else world.other
    expected = (resource, action) in ALLOWED_PATIENT_DATA[(role, relation)]
    assert _attempt(world, role, PATIENT_OPERATIONS[(resource, action)], target) is expected


@pytest.mark.parametrize("role", ["patient", "physician", "admin"])
@pytest.mark.parametrize(("resource", "action"), sorted(ADMIN_OPERATIONS))
def test_administration_cell(world: World, role: str, resource: str, action: str) -> None:
    target = {**world.own, "physician_id": world.actors["physician"].user_id}
    expected = (resource, action) in ALLOWED_ADMIN[role]
    assert _attempt(world, role, ADMIN_OPERATIONS[(resource, action)], target) is expected


def test_patients_never_see_an_unsigned_read(world: World) -> None:
    assert _attempt(world, "patient", lambda r, t: r.get_read(t["draft"]), world.own) is False
    assert _attempt(world, "physician", lambda r, t: r.get_read(t["draft"]), world.own) is True


def test_admin_phi_access_is_read_only_and_opt_in(world: World) -> None:
    with transaction(world.sessions) as session:
        records = Records(session, world.actors["admin"], admin_phi_access=True)
        assert records.get_patient(world.other["patient"]).display_name == "Bob X."
    with pytest.raises(AccessDenied), transaction(world.sessions) as session:
        Records(session, world.actors["admin"], admin_phi_access=True).add_message(
            world.other["consultation"], "admin", "x"
        )


def test_one_champion_per_plugin(world: World) -> None:
    with transaction(world.sessions) as session:
        records = Records(session, world.actors["admin"])
        first = records.register_adapter("comprehension", "v1", ["a"])
        second = records.register_adapter("comprehension", "v2", ["b"], parent_id=first.id)
        records.set_adapter_status(first.id, AdapterStatus.champion)
        records.set_adapter_status(second.id, AdapterStatus.champion)
        assert (first.status, second.status) == (AdapterStatus.retired, AdapterStatus.champion)


def test_matrix_size() -> None:
    assert len(CELLS) == 3 * 2 * 13 and len(ADMIN_OPERATIONS) * 3 == 21
