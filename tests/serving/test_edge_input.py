"""Input that once broke the service (issue 13): ids larger than the id columns hold (500s from the
database driver), loose JSON types, non-finite numbers, text no database can store. Each is a 4xx
problem answer, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from tests.agents.scenarios.conftest import auth, new_consultation, png, say

TOO_BIG = 2**31  # one past the largest id (a 32-bit INTEGER in PostgreSQL)
HUGE = 2**63  # past SQLite's 64-bit INTEGER too


def _problem(response, status: int = 422) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


@pytest.mark.parametrize("value", [TOO_BIG, HUGE, 0, -1])
def test_ids_too_large_or_below_one_in_paths_are_422(edge_api, value: int) -> None:
    client, people = edge_api
    _problem(client.get(f"/v1/reads/{value}", headers=auth(people.dr_doe)))
    _problem(client.post(f"/v1/studies/{value}/reads", headers=auth(people.dr_doe)))
    signoff = client.post(f"/v1/reads/{value}/signoff", json={"action": "sign"}, headers=auth(people.dr_doe))
    _problem(signoff)
    # The largest id is a valid id that names nothing.
    _problem(client.get(f"/v1/reads/{TOO_BIG - 1}", headers=auth(people.dr_doe)), 404)


def test_ids_too_large_in_forms_and_json_are_422(edge_api) -> None:
    client, people = edge_api
    study = client.post(
        "/v1/studies",
        data={"patient_id": str(TOO_BIG)},
        files={"file": ("ct.dcm", b"DICM", "application/dicom")},
        headers=auth(people.dr_doe),
    )
    assert _problem(study)["errors"][0]["field"] == "patient_id"
    consultation = new_consultation(client, people.pam)
    message = client.post(
        f"/v1/consultations/{consultation}/messages",
        data={"message": "about my scan", "study_id": str(HUGE)},
        files={"files": ("a.png", png(), "image/png")},
        headers=auth(people.pam),
    )
    assert _problem(message)["errors"][0]["field"] == "study_id"
    json_message = client.post(
        f"/v1/consultations/{consultation}/messages",
        json={"message": "x", "study_id": TOO_BIG},
        headers=auth(people.pam),
    )
    assert _problem(json_message)["errors"][0]["field"] == "study_id"
    _problem(client.post("/v1/consultations", json={"patient_id": TOO_BIG}, headers=auth(people.dr_doe)))
    feedback = {"message_id": TOO_BIG, "kind": "rating", "payload": {"stars": 3}}
    _problem(client.post("/v1/feedback", json=feedback, headers=auth(people.pam)))
    big_payload = {"message_id": 1, "kind": "preference", "payload": {"n": 10**30}}
    _problem(client.post("/v1/feedback", json=big_payload, headers=auth(people.pam)))


@pytest.mark.parametrize("patient_id", [True, 1.0, "1", [1]])
def test_json_ids_are_strict_integers(edge_api, patient_id) -> None:
    client, people = edge_api
    response = client.post("/v1/consultations", json={"patient_id": patient_id}, headers=auth(people.dr_doe))
    assert _problem(response)["errors"][0]["field"] == "patient_id"
    consultation = new_consultation(client, people.pam)
    answer = client.post(
        f"/v1/consultations/{consultation}/messages",
        json={"message": "hello", "study_id": patient_id},
        headers=auth(people.pam),
    )
    _problem(answer)


def test_ratings_are_finite_whole_stars(edge_api) -> None:
    client, people = edge_api
    consultation = new_consultation(client, people.pam)
    message_id = say(client, people.pam, consultation, "I have a mild headache").json()["message_id"]
    post = client.post
    headers = {**auth(people.pam), "content-type": "application/json"}
    for raw in ("1e309", "-1e309", "NaN", "Infinity", "true", "0", "6", "4.5", '"4"'):
        body = f'{{"message_id": {message_id}, "kind": "rating", "payload": {{"stars": {raw}}}}}'
        _problem(post("/v1/feedback", content=body, headers=headers))
    nested = f'{{"message_id": {message_id}, "kind": "preference", "payload": {{"a": [1e999]}}}}'
    _problem(post("/v1/feedback", content=nested, headers=headers))
    deep: dict = {}
    for _ in range(20):
        deep = {"d": deep}
    deep_body = {"message_id": message_id, "kind": "preference", "payload": deep}
    _problem(post("/v1/feedback", json=deep_body, headers=auth(people.pam)))
    good = {"message_id": message_id, "kind": "rating", "payload": {"stars": 4}}
    assert post("/v1/feedback", json=good, headers=auth(people.pam)).status_code == 201


def test_text_no_database_can_store_is_422(edge_api) -> None:
    client, people = edge_api
    consultation = new_consultation(client, people.pam)
    headers = {**auth(people.pam), "content-type": "application/json"}
    for text in ('"a\\u0000b"', '"lone \\ud800 surrogate"'):
        body = f'{{"message": {text}}}'
        response = client.post(f"/v1/consultations/{consultation}/messages", content=body, headers=headers)
        assert _problem(response)["errors"][0]["field"] in ("message", "body")
    form = client.post(
        f"/v1/consultations/{consultation}/messages",
        data={"message": "a\x00b"},
        files={"files": ("a.png", png(), "image/png")},
        headers=auth(people.pam),
    )
    _problem(form)
    payload = '{"message_id": 1, "kind": "correction", "payload": {"text": "x\\u0000"}}'
    _problem(client.post("/v1/feedback", content=payload, headers=headers))
    # Only whitespace: nothing to screen, answer or store (JSON and form alike); "" fails the schema.
    for blank in ('"   "', '"\\n\\t "'):
        response = client.post(
            f"/v1/consultations/{consultation}/messages", content=f'{{"message": {blank}}}', headers=headers
        )
        assert "whitespace" in _problem(response)["detail"]
    blank_form = client.post(
        f"/v1/consultations/{consultation}/messages",
        files={"message": (None, "  ")},
        headers=auth(people.pam),
    )
    _problem(blank_form)
    assert _problem(client.post("/v1/chat", content='{"message": " "}', headers=headers))
    # A consultation id that no route could have made answers like a missing one.
    _problem(client.get("/v1/consultations/abc%00def", headers=auth(people.pam)), 404)
    # The consultation goes on.
    assert say(client, people.pam, consultation, "still there?").status_code == 200


def test_a_file_name_is_only_a_label(edge_api) -> None:
    client, people = edge_api
    response = client.post(
        "/v1/chat",
        data={"message": "what is this?"},
        files={"image": ("../../etc/\x1bpass\x00wd.png", png(), "image/png")},
        headers=auth(people.pam),
    )
    assert response.status_code == 200, response.text
