"""Turns that go wrong leave the consultation usable (issue 13): over-long messages, failed turns, failed
streams; and who wrote what a read says, the history route's language, audited creation refusals."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from agents.prompts import AUTHOR_NOTES, DEMO_WEIGHTS_NOTICE, DISCLAIMERS
from memory.schema import AuditEntry, Role
from memory.users import Principal
from models.engine import EngineError
from serving.turns import TurnInput, stream_turn
from tests.agents.scenarios.conftest import auth, new_consultation, say, user_id
from tests.agents.scenarios.test_physician import upload_study

# About 3,400 tokens of the tiny model's byte-level tokenizer (3 per character): under the 8,000-character
# cap and under the 4,096-token prompt limit alone, but not twice.
COUGH = "我咳嗽了一个星期，晚上更厉害。" * 75
FEVER = "我发烧三天了，头很痛，没有胃口。" * 70
TOO_LONG = "我咳嗽了一个星期" * 180  # 1,440 characters, about 4,400 tokens


@pytest.fixture
def questions(api, monkeypatch) -> list[str]:
    """What the model is asked, turn by turn (the graph's own client, seen through its instance)."""
    model = api[0].app.state.services.model
    asked: list[str] = []
    real = model.ask_stream

    def recording(request):
        asked.append(request.question)
        return real(request)

    monkeypatch.setattr(model, "ask_stream", recording)
    return asked


def fail_next_turn(client, monkeypatch, error: Exception) -> None:
    model = client.app.state.services.model
    real = model.ask_stream

    def failing(request):
        monkeypatch.setattr(model, "ask_stream", real)  # only this once
        raise error

    monkeypatch.setattr(model, "ask_stream", failing)


def thread(client, consultation: str) -> list[str]:
    state = client.app.state.services.graph.get_state({"configurable": {"thread_id": consultation}})
    return [m["content"] for m in state.values.get("messages", [])]


def stored(client, token: str, consultation: str) -> list[str]:
    response = client.get(f"/v1/consultations/{consultation}", headers=auth(token))
    return [m["content"] for m in response.json()["messages"]]


def stream(client, token: str, consultation: str, message: str) -> tuple[int, list[tuple[str, dict]]]:
    with client.stream(
        "POST",
        f"/v1/consultations/{consultation}/messages",
        json={"message": message},
        headers={**auth(token), "Accept": "text/event-stream"},
    ) as response:
        raw = "".join(response.iter_text())
    if response.status_code != 200:
        return response.status_code, []
    blocks = [block.split("\n") for block in raw.strip().split("\n\n")]
    return 200, [
        (lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))) for lines in blocks
    ]


def test_an_over_long_message_is_refused_alone_and_never_stored(api, questions) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    assert say(client, people.pam, consultation, "I have a cough").status_code == 200
    before = stored(client, people.pam, consultation), thread(client, consultation)

    refused = say(client, people.pam, consultation, TOO_LONG)
    assert refused.status_code == 413, refused.text
    problem = refused.json()
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert problem["status"] == 413 and "too long" in problem["detail"] and "4096" in problem["detail"]
    assert (stored(client, people.pam, consultation), thread(client, consultation)) == before
    assert len(questions) == 1  # the model was never asked

    again = say(client, people.pam, consultation, "It is worse at night")
    assert again.status_code == 200, again.text
    assert TOO_LONG not in questions[-1]
    assert stored(client, people.pam, consultation)[-2:][0] == "It is worse at night"
    # Streamed, it is refused the same way, before any event.
    assert stream(client, people.pam, consultation, TOO_LONG) == (413, [])


def test_a_long_message_that_fits_alone_gets_only_the_context_that_still_fits(api, questions) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    assert say(client, people.pam, consultation, COUGH).status_code == 200
    second = say(client, people.pam, consultation, FEVER)
    assert second.status_code == 200, second.text
    assert FEVER in questions[-1] and COUGH not in questions[-1]  # the oldest turn went
    third = say(client, people.pam, consultation, "Should I see a doctor?")
    assert third.status_code == 200, third.text
    assert FEVER in questions[-1] and COUGH not in questions[-1]  # what fits of the latest turns


def test_a_failed_turn_leaves_no_orphan_and_the_consultation_goes_on(api, monkeypatch, questions) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    assert say(client, people.pam, consultation, "I have a cough").status_code == 200
    before = stored(client, people.pam, consultation), thread(client, consultation)

    fail_next_turn(client, monkeypatch, EngineError("generation failed: CUDA error at 0x7f3a"))
    failed = say(client, people.pam, consultation, "doomed question")
    assert failed.status_code == 502 and "0x7f3a" not in failed.text
    assert (stored(client, people.pam, consultation), thread(client, consultation)) == before

    after = say(client, people.pam, consultation, "It is worse at night")
    assert after.status_code == 200, after.text
    assert "doomed question" not in questions[-1] and "I have a cough" in questions[-1]
    assert stored(client, people.pam, consultation) == [
        *before[0],
        "It is worse at night",
        after.json()["answer"],
    ]


def test_a_failed_first_turn_leaves_an_empty_thread(api, monkeypatch) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    fail_next_turn(client, monkeypatch, EngineError("generation failed"))
    assert say(client, people.pam, consultation, "doomed question").status_code == 502
    assert (stored(client, people.pam, consultation), thread(client, consultation)) == ([], [])
    assert say(client, people.pam, consultation, "hello again").status_code == 200
    assert thread(client, consultation)[0] == "hello again"


@pytest.mark.parametrize(
    ("error", "status"),
    [(EngineError("generation failed: at /srv/models/x.bin"), 502), (RuntimeError("pid 4242 at /srv"), 500)],
)
def test_a_failed_streamed_turn_ends_with_an_error_event(api, monkeypatch, error, status) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    assert say(client, people.pam, consultation, "I have a cough").status_code == 200
    before = stored(client, people.pam, consultation), thread(client, consultation)

    fail_next_turn(client, monkeypatch, error)
    code, events = stream(client, people.pam, consultation, "doomed question")
    assert code == 200 and events[0][0] == "node"
    kind, problem = events[-1]
    assert kind == "error" and "done" not in [k for k, _ in events]
    assert set(problem) >= {"type", "title", "status", "detail"} and problem["status"] == status
    assert "/srv" not in json.dumps(problem) and "4242" not in json.dumps(problem)
    assert (stored(client, people.pam, consultation), thread(client, consultation)) == before

    code, events = stream(client, people.pam, consultation, "It is worse at night")
    assert code == 200 and events[-1][0] == "done" and events[-1][1]["status"] == "answered"


def test_a_stream_the_client_leaves_midway_leaves_no_orphan(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    assert say(client, people.pam, consultation, "I have a cough").status_code == 200
    before = stored(client, people.pam, consultation), thread(client, consultation)
    pam = Principal(user_id(client, "pam"), "pam", Role.patient)
    events = stream_turn(client.app.state.services, pam, consultation, TurnInput("never finished"))
    assert next(events)[0] == "node"
    events.close()  # what the server does when the client goes away
    assert (stored(client, people.pam, consultation), thread(client, consultation)) == before
    assert say(client, people.pam, consultation, "It is worse at night").status_code == 200


def _read_for_signoff(client, people) -> int:
    study = upload_study(client, people.dr_doe, people.pam_patient_id).json()
    drafted = client.post(f"/v1/studies/{study['id']}/reads", headers=auth(people.dr_doe)).json()
    assert drafted["provenance"]["demo_weights"] is True  # the tiny model runs demo weights
    return drafted["read_id"]


def test_a_physicians_correction_is_never_presented_as_ai_output(api) -> None:
    client, people, _ = api
    read_id = _read_for_signoff(client, people)
    text = "No acute findings. Small left effusion."
    body = client.post(
        f"/v1/reads/{read_id}/signoff",
        json={"action": "correct", "text": text},
        headers=auth(people.dr_doe),
    ).json()
    doctor = {"user_id": user_id(client, "dr_doe"), "name": "dr_doe"}
    assert body["answer"] == text and DEMO_WEIGHTS_NOTICE not in body["answer"]
    assert body["disclaimer"] == AUTHOR_NOTES["physician"]["en"] and "AI" not in body["disclaimer"]
    provenance = body["provenance"]
    assert (provenance["author"], provenance["signed_by"]) == ("physician", doctor)
    assert provenance["model"] is None and provenance["adapter_version"] is None
    assert provenance["demo_weights"] is False
    for token in (people.dr_doe, people.pam):  # the physician, and the patient later
        read = client.get(f"/v1/reads/{read_id}", headers=auth(token)).json()
        assert read["physician_final"] == text
        assert (read["provenance"]["author"], read["provenance"]["signed_by"]) == ("physician", doctor)
    # The stored answer says the same: no model behind it, so no feedback to a model either.
    answer = client.get(f"/v1/consultations/{body['consultation_id']}", headers=auth(people.dr_doe)).json()
    assert answer["messages"][-1]["provenance"]["author"] == "physician"
    rating = client.post(
        "/v1/feedback",
        json={"message_id": body["message_id"], "kind": "rating", "payload": {"stars": 5}},
        headers=auth(people.dr_doe),
    )
    assert rating.status_code == 422


def test_a_signed_ai_draft_says_it_was_drafted_by_ai_and_signed(api) -> None:
    client, people, _ = api
    read_id = _read_for_signoff(client, people)
    body = client.post(
        f"/v1/reads/{read_id}/signoff", json={"action": "sign"}, headers=auth(people.dr_doe)
    ).json()
    doctor = {"user_id": user_id(client, "dr_doe"), "name": "dr_doe"}
    provenance = body["provenance"]
    assert (provenance["author"], provenance["signed_by"]) == ("ai+physician", doctor)
    assert provenance["adapter_version"] == "tiny-seed0-v1"  # the draft's model stays named
    assert body["disclaimer"] == AUTHOR_NOTES["ai+physician"]["en"]
    read = client.get(f"/v1/reads/{read_id}", headers=auth(people.pam)).json()
    assert (read["provenance"]["author"], read["provenance"]["signed_by"]) == ("ai+physician", doctor)


def test_the_history_route_answers_in_the_language_of_the_question(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    chinese = say(client, people.pam, consultation, "我上个月的化验单在哪").json()
    assert chinese["route"] == "history", chinese
    assert chinese["answer"].startswith("记录中有") and chinese["disclaimer"] == DISCLAIMERS["zh"]
    english = say(client, people.pam, consultation, "what did my last blood test say?").json()
    assert english["route"] == "history" and "consultation(s)" in english["answer"]


def test_a_patients_attempt_to_open_a_consultation_for_another_patient_is_audited(api) -> None:
    client, people, _ = api
    for patient_id in (people.pam_patient_id, 999_999):
        refused = client.post("/v1/consultations", json={"patient_id": patient_id}, headers=auth(people.pete))
        assert (refused.status_code, refused.json()["detail"]) == (404, "not found"), refused.text
    with client.app.state.services.sessions() as session:
        denials = session.scalars(
            select(AuditEntry).where(
                AuditEntry.outcome == "denied", AuditEntry.actor_id == user_id(client, "pete")
            )
        ).all()
    assert [d.action for d in denials] == ["consultation.write", "consultation.write"]
    assert denials[0].patient_id == people.pam_patient_id
    # Their own consultation still opens, with or without their own id.
    assert new_consultation(client, people.pete, patient_id=people.pete_patient_id)
    assert new_consultation(client, people.pete)
