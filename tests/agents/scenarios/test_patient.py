"""Patients end to end through HTTP: a consultation, a red flag, Chinese, streaming, feedback."""

from __future__ import annotations

import json

from sqlalchemy import select

from agents.prompts import DISCLAIMERS
from memory.audit import verify
from memory.schema import AuditEntry, Consultation
from tests.agents.scenarios.conftest import auth, new_consultation, png, say


def test_a_patient_consultation_with_provenance_disclaimer_and_feedback(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    first = say(client, people.pam, consultation, "I have had a mild dry cough for three days.")
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["route"], body["escalated"], body["status"]) == ("consult", False, "answered")
    assert (
        body["provenance"]["adapter_version"] == "tiny-seed0-v1"
        and body["provenance"]["model"] == "tiny-seed0"
    )
    assert body["disclaimer"] == DISCLAIMERS["en"]
    picture = client.post(
        f"/v1/consultations/{consultation}/messages",
        data={"message": "And this rash?"},
        files={"files": ("rash.png", png(), "image/png")},
        headers=auth(people.pam),
    )
    assert picture.status_code == 200, picture.text

    stored = client.get(f"/v1/consultations/{consultation}", headers=auth(people.pam)).json()
    assert [m["author_role"] for m in stored["messages"]] == ["patient", "assistant", "patient", "assistant"]
    assert len(stored["messages"][2]["attachments"]) == 1
    assert stored["messages"][1]["provenance"]["adapter_version"] == "tiny-seed0-v1"
    feedback = client.post(
        "/v1/feedback",
        json={"message_id": body["message_id"], "kind": "rating", "payload": {"stars": 4}},
        headers=auth(people.pam),
    )
    assert feedback.status_code == 201 and feedback.json()["adapter_version"] == "tiny-seed0-v1"
    summary = client.get("/v1/admin/feedback/summary", headers=auth(people.admin)).json()
    assert {
        "plugin": "comprehension",
        "adapter_version": "tiny-seed0-v1",
        "kind": "rating",
        "count": 1,
    } in summary


def test_a_red_flag_escalates_notifies_and_flags(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    response = say(client, people.pam, consultation, "I have crushing chest pain and I'm sweating a lot")
    body = response.json()
    assert response.status_code == 200 and body["escalated"] is True and body["route"] == "escalate"
    assert body["triage"]["red_flag"] and body["triage"]["category"] == "cardiac"
    assert "emergency" in body["answer"].lower() and body["provenance"] is None  # rules, not the model
    assert client.get(f"/v1/consultations/{consultation}", headers=auth(people.pam)).json()["flag"]
    notes = client.get("/v1/notifications", headers=auth(people.dr_doe)).json()
    assert [(n["kind"], n["consultation_id"]) for n in notes] == [("red_flag", consultation)]
    assert client.get("/v1/notifications", headers=auth(people.dr_who)).json() == []
    # Past history does not escalate.
    calm = say(
        client, people.pam, consultation, "My father had a stroke years ago; I feel fine today."
    ).json()
    assert calm["escalated"] is False and calm["route"] in ("consult", "history")


def test_an_urgent_message_gets_same_day_advice_and_tells_the_care_team_at_a_lower_priority(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    text = "My left calf has been swollen, warm and painful since yesterday, after a long-haul flight."
    body = say(client, people.pam, consultation, text).json()
    assert (body["route"], body["escalated"], body["triage"]["level"]) == ("consult", False, "urgent")
    assert body["triage"]["red_flag"] is False and body["triage"]["sources"]
    assert "seen by a clinician today" in body["answer"]
    assert body["provenance"]["adapter_version"] == "tiny-seed0-v1"  # the model still answered
    assert body["provenance"]["triage"]["level"] == "urgent"
    assert body["provenance"]["triage"]["condition"] == body["triage"]["condition"]
    notes = client.get("/v1/notifications", headers=auth(people.dr_doe)).json()
    assert [(n["kind"], n["consultation_id"]) for n in notes] == [("same_day", consultation)]
    assert client.get(f"/v1/consultations/{consultation}", headers=auth(people.pam)).json()["flag"] is None
    stored = client.get(f"/v1/consultations/{consultation}", headers=auth(people.pam)).json()
    assert stored["messages"][1]["provenance"]["triage"]["level"] == "urgent"


def test_a_chinese_consultation_is_answered_in_chinese(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    body = say(client, people.pam, consultation, "我咳嗽三天了，晚上比较厉害，需要吃药吗？").json()
    assert body["route"] == "consult" and body["disclaimer"] == DISCLAIMERS["zh"]
    urgent = say(client, people.pam, consultation, "我胸口剧痛，喘不上气，出冷汗").json()
    assert urgent["escalated"] is True and "120" in urgent["answer"] and "疑似心脏病发作" in urgent["answer"]


def test_a_message_the_screen_cannot_read_says_it_was_not_screened(api) -> None:
    """Spanish chest pain finds no English or Chinese rule: the answer must not let silence read as
    "nothing urgent" — it says the message went unscreened and gives the emergency number."""
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    spanish = "Me duele mucho el pecho y el brazo izquierdo desde anoche"
    body = say(client, people.pam, consultation, spanish).json()
    assert body["triage"]["unscreened_language"] == "es", body["triage"]
    assert "looks like Spanish" in body["answer"] and "not checked for warning signs" in body["answer"]
    assert "112, 911 or 999" in body["answer"]
    # A person reads what no rule could: the care team hears of it, once per consultation.
    assert body["tool_results"]["notified_unscreened"], body["tool_results"]
    notes = client.get("/v1/notifications", headers=auth(people.dr_doe)).json()
    unscreened = [n for n in notes if n["kind"] == "unscreened" and n["consultation_id"] == consultation]
    assert len(unscreened) == 1 and "Spanish" in unscreened[0]["text"], notes
    again = say(client, people.pam, consultation, "Ahora también me falta el aire y estoy mareado").json()
    assert again["triage"]["unscreened_language"] == "es", again["triage"]
    assert "notified_unscreened" not in again["tool_results"]
    notes = client.get("/v1/notifications", headers=auth(people.dr_doe)).json()
    assert sum(n["kind"] == "unscreened" and n["consultation_id"] == consultation for n in notes) == 1
    # English and Chinese are screened as ever, with no such note.
    for text in ("I have had a mild sore throat since Monday", "我咳嗽三天了，晚上比较厉害"):
        plain = say(client, people.pam, consultation, text).json()
        assert plain["triage"]["unscreened_language"] is None and "safety check" not in plain["answer"]


def test_answers_stream_over_sse(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    with client.stream(
        "POST",
        f"/v1/consultations/{consultation}/messages",
        json={"message": "Any advice?"},
        headers={**auth(people.pam), "Accept": "text/event-stream"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = [
        (block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:]))
        for block in raw.strip().split("\n\n")
    ]
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and "node" in kinds
    nodes = [data["node"] for kind, data in events if kind == "node"]
    assert (
        nodes[:3] == ["intake", "safety_screen", "route"] and "consult" in nodes and nodes[-1] == "post_check"
    )
    done = events[-1][1]
    tokens = "".join(data["text"] for kind, data in events if kind == "token")
    assert done["answer"].startswith(tokens.strip()[:20]) and done["message_id"]


def test_the_audit_chain_holds_after_the_scenarios(api) -> None:
    client, people, _ = api
    consultation = new_consultation(client, people.pam)
    say(client, people.pam, consultation, "hello")
    with client.app.state.services.sessions() as session:
        assert verify(session).ok


def test_a_consult_retrieves_only_the_patients_own_history(api) -> None:
    client, people, _ = api
    for token in (people.pam, people.pete):
        earlier = new_consultation(client, token)
        say(client, token, earlier, "I keep getting migraine headaches with flashing lights before them.")
    with client.app.state.services.sessions() as session:
        mine = select(Consultation).where(Consultation.patient_id == people.pam_patient_id)
        rows = session.scalars(mine).all()
        pam_earlier = f"consultation:{rows[0].id}"
    now = new_consultation(client, people.pam)
    body = say(client, people.pam, now, "My migraine with the flashing lights is back.").json()
    used = body["tool_results"]["history_used"]
    assert used == [pam_earlier], used
    # Read once a turn, in the transaction that stored the message: its audit row comes right after the
    # message's own (one lock of the audit head, one commit), and the consult step reads nothing again.
    with client.app.state.services.sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
    history = [r for r in rows if r.resource_id == f"patient:{people.pam_patient_id}:history"]
    assert [r.action for r in history] == ["consultation.read"] * 2  # one per turn of Pam's
    last = rows.index(history[-1])
    assert (rows[last - 1].action, rows[last - 1].resource_id) == ("consultation.write", now)
