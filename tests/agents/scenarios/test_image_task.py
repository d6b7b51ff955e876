"""A physician's image task end to end through HTTP, on the official tiny fixture (it has a VQGAN)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from serving.services import prepare_database
from serving.settings import Settings
from tests.agents.scenarios.conftest import auth, make_people, new_consultation, start


@pytest.fixture
def generating_api(tmp_path: Path, official_tiny: Path):
    settings = Settings(data_dir=tmp_path, max_new_tokens=4, rate_limit={"burst": 100, "per_minute": 6000})
    prepare_database(settings).dispose()
    client, services = start(settings, HealthGPT(ModelSpec.from_yaml(official_tiny / "healthgpt.yaml")))
    yield client, make_people(services), official_tiny
    client.__exit__(None, None, None)
    services.close()


def test_a_physician_converts_a_ct_image_and_gets_the_picture(generating_api) -> None:
    client, people, fixture = generating_api
    thread = client.post(
        "/v1/consultations", json={"patient_id": people.pam_patient_id}, headers=auth(people.dr_doe)
    ).json()["id"]
    response = client.post(
        f"/v1/consultations/{thread}/messages",
        data={"message": "Convert this CT to MRI", "request": "image_task", "image_task": "ct_to_mri"},
        files={"files": ("ct.png", (fixture / "image.png").read_bytes(), "image/png")},
        headers=auth(people.dr_doe),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route"] == "image_task" and body["provenance"]["plugin"] == "generation"
    assert body["tool_results"]["vq_tokens"] == 32 * 32
    picture = client.app.state.services.pixels.get(body["tool_results"]["image_key"])
    with Image.open(io.BytesIO(picture)) as image:
        assert image.size == (256, 256)
    stored = client.get(f"/v1/consultations/{thread}", headers=auth(people.dr_doe)).json()["messages"]
    assert stored[-1]["attachments"] == [body["tool_results"]["image_key"]]
    # The same request from a patient is refused by the route table, and no image is made.
    own = new_consultation(client, people.pam)
    refused = client.post(
        f"/v1/consultations/{own}/messages",
        data={"message": "Convert this CT to MRI", "request": "image_task", "image_task": "ct_to_mri"},
        files={"files": ("ct.png", (fixture / "image.png").read_bytes(), "image/png")},
        headers=auth(people.pam),
    ).json()
    assert refused["route"] == "refuse" and "image_key" not in refused["tool_results"]
