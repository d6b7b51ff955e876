"""Threads survive a gateway restart: a consultation continues, a read awaiting sign-off can be signed."""

from __future__ import annotations

from tests.agents.scenarios.conftest import auth, new_consultation, start
from tests.agents.scenarios.test_physician import upload_study


def test_a_consultation_and_a_pending_read_survive_a_restart(api, tiny_model) -> None:
    client, people, settings = api
    consultation = new_consultation(client, people.pam)
    client.post(
        f"/v1/consultations/{consultation}/messages",
        json={"message": "I have a headache"},
        headers=auth(people.pam),
    )
    study = upload_study(client, people.dr_doe, people.pam_patient_id).json()
    read_id = client.post(f"/v1/studies/{study['id']}/reads", headers=auth(people.dr_doe)).json()["read_id"]

    client.app.state.services.close()  # the gateway goes down ...
    restarted, services = start(settings, tiny_model)  # ... and a new one starts on the same databases
    try:
        body = restarted.post(
            f"/v1/consultations/{consultation}/messages",
            json={"message": "still there?"},
            headers=auth(people.pam),
        ).json()
        assert body["status"] == "answered"
        state = services.graph.get_state({"configurable": {"thread_id": consultation}}).values
        assert [m["content"] for m in state["messages"] if m["role"] == "user"] == [
            "I have a headache",
            "still there?",
        ]
        signed = restarted.post(
            f"/v1/reads/{read_id}/signoff", json={"action": "sign"}, headers=auth(people.dr_doe)
        )
        assert signed.status_code == 200, signed.text
        assert restarted.get(f"/v1/reads/{read_id}", headers=auth(people.pam)).json()["status"] == "final"
    finally:
        restarted.__exit__(None, None, None)
        services.close()
