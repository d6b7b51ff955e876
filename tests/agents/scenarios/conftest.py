"""A running API over real databases (SQLite and PostgreSQL) with the tiny model, and its people:
two patients, a physician caring for one of them, and the bootstrap admin."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from memory.db import make_session_factory, transaction
from memory.records import Records
from memory.schema import Role, User
from memory.users import Principal, new_token, set_bootstrap_token
from serving.api.app import create_app
from serving.services import build_services, prepare_database
from serving.settings import Settings
from tools.healthgpt import InProcessHealthGPT


@dataclass
class People:
    admin: str
    pam: str  # patient, in dr_doe's care
    pete: str  # another patient
    dr_doe: str  # physician caring for pam
    dr_who: str  # physician caring for nobody
    pam_patient_id: int
    pete_patient_id: int


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_consultation(client: TestClient, token: str, **body) -> str:
    response = client.post("/v1/consultations", json=body, headers=auth(token))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def say(client: TestClient, token: str, consultation: str, message: str, **kwargs):
    return client.post(
        f"/v1/consultations/{consultation}/messages", json={"message": message}, headers=auth(token), **kwargs
    )


def png(color: tuple[int, int, int] = (80, 80, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_people(services) -> People:
    admin_token = new_token()
    with transaction(services.sessions) as session:
        admin = set_bootstrap_token(session, admin_token)
        records = Records(session, admin)
        tokens, ids = {}, {}
        for name, role in [
            ("pam", Role.patient),
            ("pete", Role.patient),
            ("dr_doe", Role.physician),
            ("dr_who", Role.physician),
        ]:
            user, token = records.create_user(name, role)
            tokens[name], ids[name] = token, user.id
        pam = records.create_patient("Pam Example", user_id=ids["pam"])
        pete = records.create_patient("Pete Example", user_id=ids["pete"])
        records.add_to_care_team(ids["dr_doe"], pam.id)
    return People(
        admin_token, tokens["pam"], tokens["pete"], tokens["dr_doe"], tokens["dr_who"], pam.id, pete.id
    )


def start(settings: Settings, model) -> tuple[TestClient, object]:
    services = build_services(settings, InProcessHealthGPT(model))
    client = TestClient(create_app(services), raise_server_exceptions=False)
    client.__enter__()
    return client, services


@pytest.fixture
def api(tmp_path: Path, database_url: str, tiny_model):
    """(client, people, settings); restart with ``api_restart``."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        max_new_tokens=6,
        rate_limit={"burst": 1000, "per_minute": 60000},
    )
    prepare_database(settings).dispose()
    client, services = start(settings, tiny_model)
    people = make_people(services)
    yield client, people, settings
    client.__exit__(None, None, None)
    services.close()


def user_id(client: TestClient, name: str) -> int:
    with client.app.state.services.sessions() as session:
        return session.scalar(select(User.id).where(User.name == name))


def records_as(client: TestClient, name: str, role: Role):
    services = client.app.state.services
    session = make_session_factory(services.engine)()
    return session, Records(session, Principal(user_id(client, name), name, role))
