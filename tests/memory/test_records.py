"""Repositories: durability of acknowledged writes, domain errors without partial writes, provenance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import func, select

from memory.db import transaction
from memory.records import InvalidInput, NotFound, Records
from memory.schema import Feedback, Message, Patient, ReadStatus, Role, Study
from memory.users import Principal

SETUP = Principal(user_id=0, name="setup", role=Role.admin)
PROVENANCE = {"model": "healthgpt-m3", "plugin": "comprehension", "adapter_version": "v7"}


def _patient_with_answer(sessions) -> tuple[Principal, Principal, int, int]:
    """A patient, their physician, the patient id and an AI message in the patient's consultation."""
    with transaction(sessions) as session:
        records = Records(session, SETUP)
        patient_user, _ = records.create_user("pat", Role.patient)
        doctor_user, _ = records.create_user("doc", Role.physician)
        patient_id = records.create_patient("Pat P.", patient_user.id).id
        records.add_to_care_team(doctor_user.id, patient_id)
    patient = Principal(patient_user.id, "pat", Role.patient)
    doctor = Principal(doctor_user.id, "doc", Role.physician)
    with transaction(sessions) as session:
        records = Records(session, patient)
        records.open_consultation("c1", patient_id)
        message_id = records.add_message("c1", "assistant", "an answer", provenance=PROVENANCE).id
    return patient, doctor, patient_id, message_id


def test_feedback_carries_the_producing_model(sessions) -> None:
    patient, _, _, message_id = _patient_with_answer(sessions)
    with transaction(sessions) as session:
        feedback = Records(session, patient).add_feedback(
            "correction", {"text": "wrong side"}, message_id=message_id
        )
        assert (feedback.model, feedback.plugin, feedback.adapter_version) == (
            "healthgpt-m3",
            "comprehension",
            "v7",
        )
    with transaction(sessions) as session:
        aggregates = Records(session, Principal(0, "a", Role.admin)).feedback_aggregates()
    assert [(a.plugin, a.adapter_version, a.kind, a.count) for a in aggregates] == [
        ("comprehension", "v7", "correction", 1)
    ]


def test_reads_are_preliminary_until_signed_then_amended(sessions) -> None:
    _, doctor, patient_id, _ = _patient_with_answer(sessions)
    with transaction(sessions) as session:
        records = Records(session, doctor)
        read = records.add_read(records.add_study(patient_id, modality="CT").id, "AI draft", PROVENANCE)
        assert read.status is ReadStatus.preliminary and read.signed_by is None
        records.sign_read(read.id, "Physician final")
        assert read.status is ReadStatus.final and read.signed_by == doctor.user_id
        records.sign_read(read.id, "Correction")
        assert read.status is ReadStatus.amended


BIG = {"x": "y" * 70_000}


@pytest.mark.parametrize(
    ("actor", "call", "error", "fragment"),
    [
        ("admin", lambda r, ids: r.add_to_care_team(9999, ids["patient"]), NotFound, "user 9999"),
        ("admin", lambda r, ids: r.create_user("doc", Role.physician), InvalidInput, "exists"),
        ("doc", lambda r, ids: r.add_study(ids["patient"] + 100), NotFound, "patient"),
        ("doc", lambda r, ids: r.add_read(4242, "x", PROVENANCE), NotFound, "study 4242"),
        (
            "doc",
            lambda r, ids: r.add_feedback("rating", BIG, message_id=ids["message"]),
            InvalidInput,
            "limit",
        ),
        ("doc", lambda r, ids: r.add_feedback("stars", {}, message_id=ids["message"]), InvalidInput, "kind"),
        (
            "doc",
            lambda r, ids: r.add_feedback("rating", {}, message_id=1, read_id=1),
            InvalidInput,
            "exactly one",
        ),
    ],
)
def test_domain_errors_write_nothing(sessions, actor: str, call, error, fragment: str) -> None:
    _, doctor, patient_id, message_id = _patient_with_answer(sessions)
    ids = {"patient": patient_id, "message": message_id}
    principal = {"admin": SETUP, "doc": doctor}[actor]
    tables = (Feedback, Study, Message, Patient)
    with sessions() as session:
        before = [session.scalar(select(func.count()).select_from(t)) for t in tables]
    with pytest.raises(error, match=fragment), transaction(sessions) as session:
        Records(session, SETUP).create_patient("Partial write marker")  # must roll back with the failure
        call(Records(session, principal), ids)
    with sessions() as session:
        assert [session.scalar(select(func.count()).select_from(t)) for t in tables] == before


WRITER = textwrap.dedent(
    """
    import sys, time
    from memory.db import make_engine, make_session_factory, transaction
    from memory.records import Records
    from memory.schema import Role
    from memory.users import Principal

    url, user_id, message_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sessions = make_session_factory(make_engine(url))
    with transaction(sessions) as session:
        feedback = Records(session, Principal(user_id, "pat", Role.patient)).add_feedback(
            "rating", {"stars": 5}, message_id=message_id)
    print("ACK", feedback.id, flush=True)   # acknowledged only after commit returned
    time.sleep(60)
    """
)


def test_acknowledged_feedback_survives_a_kill(sessions, database_url: str) -> None:
    patient, _, _, message_id = _patient_with_answer(sessions)
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, database_url, str(patient.user_id), str(message_id)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("ACK "), line
        os.kill(process.pid, signal.SIGKILL)  # no chance to flush or clean up anything more
    finally:
        process.kill()
        process.wait(30)
    feedback_id = int(line.split()[1])
    with sessions() as session:
        stored = session.get(Feedback, feedback_id)
        assert stored is not None and stored.payload == {"stars": 5}
