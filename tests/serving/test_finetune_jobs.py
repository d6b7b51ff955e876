"""The admin's job through HTTP on the tiny model: corrections since the champion → a fine-tune job
(progress, gate, candidate) → promotion (new answers carry the new version) → rollback (answers
bit-identical to before); a harmful adapter is rejected and never served; cancellation; a killed worker
fails the job and leaves the champion; a job outlives a gateway restart.

The pictures carry meaning by colour (one finding per colour, as in tests/tools/test_finetune_gate.py), so
the tiny model learns them in a few dozen steps and the gate's checks are real signals."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from memory.db import transaction
from memory.records import Records
from memory.schema import AdapterStatus, AdapterVersion, AuditEntry, FineTuneJob, JobStatus
from models.healthgpt import HealthGPT
from serving.services import prepare_database
from serving.settings import Settings
from tests.agents.scenarios.conftest import auth, make_people, start
from tools.finetune.dataset import group_hash, split_of
from tools.finetune.feedback import read_sections
from tools.finetune.vqa import freeze_regression_set

PLUGIN = "comprehension"
QUESTION = "Describe the findings in this CT image."
FINDINGS = {
    (200, 30, 30): "No focal consolidation.",
    (30, 190, 60): "A large effusion.",
    (40, 60, 210): "Severe pneumothorax.",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def png(colour, size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def shade(colour, step: int):
    return tuple(min(255, value + 6 * step) for value in colour)


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("regression")
    items = []
    for index, colour in enumerate(FINDINGS):
        (root / f"{index}.png").write_bytes(png(shade(colour, 9)))
        items.append(
            {
                "id": f"c{index}",
                "question": QUESTION,
                "choices": list(FINDINGS.values()),
                "answer": index,
                "image": f"{index}.png",
            }
        )
    (root / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    freeze_regression_set(root, name="colours", description="test set", synthetic=True)
    return root


def settings_for(tmp_path: Path, database_url: str, regression: Path, **finetune) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        max_new_tokens=6,
        rate_limit={"burst": 100_000, "per_minute": 6_000_000},
        finetune={
            "executor": "thread",
            "epochs": 12,
            "batch_size": 4,
            "micro_batch_size": 4,
            "lr": 3e-3,
            "projector_lr": 3e-3,
            "dropout": 0.0,
            "schedule": "constant",
            "warmup_ratio": 0.0,
            "min_examples": 4,
            "torch_threads": 1,
            "regression_set": str(regression),
            "heartbeat_s": 0.2,
            **finetune,
        },
    )


def _fresh_redis(url: str) -> None:
    """Job ids restart with each test database: their streams and locks of earlier tests go first."""
    from memory.cache import make_redis

    client = make_redis(url)
    keys = [*client.scan_iter(match="ha:job:*"), *client.scan_iter(match="ha:lock:*")]
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path, database_url: str, tiny_spec, regression):
    """On PostgreSQL the events and locks are Redis's (as in production); on SQLite in-process."""
    settings = settings_for(tmp_path, database_url, regression)
    if database_url.startswith("postgresql"):
        redis_url = request.getfixturevalue("redis_url")
        _fresh_redis(redis_url)
        settings = settings.model_copy(update={"redis_url": redis_url})
    prepare_database(settings).dispose()
    model = HealthGPT(tiny_spec.model_copy(deep=True))  # its own: promotion loads adapters into it
    client, services = start(settings, model)
    people = make_people(services)
    yield client, people, services
    client.__exit__(None, None, None)
    services.close()


def correct_reads(services, people, count: int = 12, *, shuffle: bool = False) -> None:
    """Physicians' corrections of the champion's reads, as the second-read flow records them."""
    from memory.users import Principal

    with services.sessions() as session:
        from memory.schema import User

        doc = session.scalar(select(User).where(User.name == "dr_doe"))
        doctor = Principal(doc.id, doc.name, doc.role)
    version = services.model.info().adapter_versions[PLUGIN]
    findings = list(FINDINGS.values())
    placed = {"train": 0, "heldout": 0}
    for _ in range(count):
        with transaction(services.sessions) as session:
            records = Records(session, doctor)
            study = records.add_study(people.pam_patient_id, modality="CT")
            side = split_of(group_hash(f"study:{study.id}"), 0.2)
            index = placed[side] % len(FINDINGS)
            colour = list(FINDINGS)[index]
            study.pixel_key = services.pixels.put(png(shade(colour, 1 + placed[side])))
            placed[side] += 1
            finding = findings[(index + 1) % 3] if shuffle and side == "train" else findings[index]
            provenance = {"model": services.model.info().model, "plugin": PLUGIN, "adapter_version": version}
            drafted = "Findings: Patient reports headache.\nImpression: (none stated)"
            read = records.add_read(study.id, drafted, provenance)
            records.sign_read(read.id, f"Findings: {finding}")
            records.add_feedback("correction", {"text": f"Findings: {finding}"}, read_id=read.id)


def ct_study(colour, size: int = 32) -> bytes:
    """A colour CT as a DICOM file: its rendered picture is the colour (as the pictures above)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.BurnedInAnnotation = "P1", "Doe^Pam", "CT", "NO"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.full((size, size, 3), colour, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def second_read(client, people, colour) -> dict:
    """A physician uploads a study and asks for the AI's second read (HTTP): the drafted turn."""
    study = client.post(
        "/v1/studies",
        data={"patient_id": str(people.pam_patient_id)},
        files={"file": ("ct.dcm", ct_study(colour), "application/dicom")},
        headers=auth(people.dr_doe),
    )
    assert study.status_code == 201, study.text
    drafted = client.post(f"/v1/studies/{study.json()['id']}/reads", headers=auth(people.dr_doe))
    assert drafted.status_code == 201 and drafted.json()["read_id"], drafted.text
    # The answer is the draft as presented (labelled preliminary, demo); the read holds the model's text.
    read = client.get(f"/v1/reads/{drafted.json()['read_id']}", headers=auth(people.dr_doe)).json()
    return drafted.json() | {"study_id": study.json()["id"], "ai_draft": read["ai_draft"]}


def correct_reads_http(client, people, services, count: int = 12) -> None:
    """Physicians correct the champion's second reads through the API (upload, read, correction)."""
    from memory.schema import Study

    placed = {"train": 0, "heldout": 0}
    for _ in range(count):
        with services.sessions() as session:  # the id the upload will get: its side of the split
            study_id = (session.scalar(select(func.max(Study.id))) or 0) + 1
        side = split_of(group_hash(f"study:{study_id}"), 0.2)
        index = placed[side] % len(FINDINGS)
        drafted = second_read(client, people, shade(list(FINDINGS)[index], 1 + placed[side]))
        assert drafted["study_id"] == study_id
        placed[side] += 1
        corrected = client.post(
            f"/v1/reads/{drafted['read_id']}/signoff",
            json={"action": "correct", "text": f"Findings: {list(FINDINGS.values())[index]}"},
            headers=auth(people.dr_doe),
        )
        assert corrected.status_code == 200, corrected.text


def run_job(client, people, **body) -> dict:
    response = client.post("/v1/admin/finetunes", json={"plugin": PLUGIN, **body}, headers=auth(people.admin))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    client.app.state.services.finetunes.wait(job_id, 300)
    job = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin))
    assert job.status_code == 200, job.text
    return job.json()


def ask(client, people) -> tuple[str, str]:
    response = client.post("/v1/chat", json={"message": "I have a mild cough."}, headers=auth(people.pam))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["answer"], (body["provenance"] or {}).get("adapter_version")


def answer_with_version(services, image: bytes) -> tuple[str, str]:
    from tools.healthgpt import AskRequest

    result = services.model.ask(AskRequest(question=QUESTION, image=image, max_new_tokens=8))
    return result.text, result.provenance.adapter_version


def test_corrections_job_gate_promote_rollback(world) -> None:
    client, people, services = world
    picture = png(shade(list(FINDINGS)[1], 2))
    before_text, base_version = answer_with_version(services, picture)
    correct_reads_http(client, people, services)
    summary = client.get("/v1/admin/feedback/summary", headers=auth(people.admin)).json()
    assert {"plugin": PLUGIN, "adapter_version": base_version, "kind": "correction", "count": 12} in summary
    job = run_job(client, people, epochs=80)  # enough for the tiny model to learn its rows by heart
    assert job["status"] == "succeeded", json.dumps(job, indent=2)
    assert job["gate"]["passed"] is True and {c["name"] for c in job["gate"]["checks"]} == {
        "heldout_logprob",
        "regression_vqa",
        "image_reliance",
    }
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    assert job["champion_version"] == base_version and job["candidate_version"]
    events = client.get(f"/v1/admin/finetunes/{job['id']}/events", headers=auth(people.admin)).json()
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "queued" and "running" in kinds and "evaluating" in kinds and kinds[-1] == "succeeded"
    progress = [e["data"] for e in events if e["kind"] == "progress"]
    assert progress and {"step", "loss", "tokens_per_second", "eta_seconds"} <= set(progress[0])
    # SSE: the history, ending with the terminal event.
    with client.stream(
        "GET",
        f"/v1/admin/finetunes/{job['id']}/events",
        headers={**auth(people.admin), "Accept": "text/event-stream"},
    ) as sse:
        text = "".join(sse.iter_text())
    assert "event: queued" in text and text.rstrip().split("\n\n")[-1].splitlines()[1] == "event: succeeded"

    candidate = job["candidate_version"]
    stored = client.get("/v1/admin/adapters", headers=auth(people.admin)).json()
    entry = next(a for a in stored["registered"] if a["version"] == candidate)
    assert entry["status"] == "candidate"
    with services.sessions() as session:
        row = session.scalar(select(AdapterVersion).where(AdapterVersion.version == candidate))
        assert (
            Path(row.path).name == row.sha256
            and Path(row.path).parent.parent == services.settings.adapter_dir
        )

    promoted = client.post(
        f"/v1/admin/adapters/{candidate}/promote",
        json={"reason": "better on corrections"},
        headers=auth(people.admin),
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {
        "plugin": PLUGIN,
        "version": candidate,
        "previous": base_version,
        "status": "champion",
    }
    _, version_now = ask(client, people)
    assert version_now == candidate  # the next answer's provenance carries the new version
    # The next second read carries it too, and a trained question gets its trained answer.
    read = second_read(client, people, shade(list(FINDINGS)[1], 2))
    assert read["provenance"]["adapter_version"] == candidate, read["provenance"]
    drafted = read_sections(read["ai_draft"])["findings"]  # cut at the settings' max_new_tokens
    assert len(drafted) >= 6 and FINDINGS[list(FINDINGS)[1]].startswith(drafted), read["ai_draft"]
    trained_text, _ = answer_with_version(services, picture)
    assert trained_text == FINDINGS[list(FINDINGS)[1]] != before_text

    rolled = client.post(
        f"/v1/admin/adapters/{PLUGIN}/rollback", json={"reason": "drill"}, headers=auth(people.admin)
    )
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == base_version and rolled.json()["previous"] == candidate
    assert answer_with_version(services, picture) == (before_text, base_version)  # bit-identical
    with services.sessions() as session:
        actions = [
            (e.action, e.detail.get("action"), e.detail.get("reason"))
            for e in session.scalars(select(AuditEntry).where(AuditEntry.resource == "adapter"))
        ]
        assert ("adapter.write", "promote", "better on corrections") in actions
        assert ("adapter.write", "rollback", "drill") in actions
        assert session.scalar(select(AdapterVersion.status).where(AdapterVersion.version == candidate)) == (
            AdapterStatus.rolled_back
        )


def curated_upload(rows: list[dict], images: dict[str, bytes], name: str = "rows.jsonl") -> list:
    jsonl = "".join(json.dumps(row) + "\n" for row in rows).encode()
    parts = [("file", (name, jsonl, "application/x-ndjson"))]
    return parts + [("images", (key, data, "image/png")) for key, data in images.items()]


def test_curated_datasets_by_http_then_a_job_on_them(world) -> None:
    client, people, services = world
    admin = auth(people.admin)
    colours = list(FINDINGS)
    images = {f"c{i}.png": png(shade(colours[i % 3], i)) for i in range(12)}
    rows = [
        {"question": QUESTION, "answer": FINDINGS[colours[i % 3]], "image": f"c{i}.png"} for i in range(12)
    ]
    form = {"plugin": PLUGIN, "name": "colour findings"}

    # Admins only; every bad row answered at once, each named by its line; nothing outside the upload.
    denied = client.post(
        "/v1/admin/datasets", data=form, files=curated_upload(rows, images), headers=auth(people.dr_doe)
    )
    assert denied.status_code == 403
    bad = [
        rows[0],
        {"question": "Q"},
        {**rows[1], "image": "../../etc/passwd"},
        {**rows[2], "image": "gone.png"},
    ]
    refused = client.post("/v1/admin/datasets", data=form, files=curated_upload(bad, images), headers=admin)
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    messages = [e["message"] for e in refused.json()["errors"]]
    assert messages == [
        "rows.jsonl:2: 'answer' must be a non-empty string",
        "rows.jsonl:3: 'image' must name one of the uploaded files, not a path",
        "rows.jsonl:4: image not found: gone.png",
    ], refused.json()
    assert "rows.jsonl:2" in refused.json()["detail"]
    unknown = client.post(
        "/v1/admin/datasets", data={"plugin": "nope"}, files=curated_upload(rows, images), headers=admin
    )
    assert unknown.status_code == 422 and "plugin" in unknown.json()["detail"]
    assert client.post("/v1/admin/datasets", json={"plugin": PLUGIN}, headers=admin).status_code == 415

    added = client.post("/v1/admin/datasets", data=form, files=curated_upload(rows, images), headers=admin)
    assert added.status_code == 201, added.text
    dataset = added.json()
    assert dataset["plugin"] == PLUGIN and dataset["rows"] == 12 and dataset["images"] == 12
    assert dataset["name"] == "colour findings" and dataset["file"] == "rows.jsonl"
    again = client.post("/v1/admin/datasets", data=form, files=curated_upload(rows, images), headers=admin)
    assert again.status_code == 409 and dataset["id"] in again.json()["detail"]
    listed = client.get("/v1/admin/datasets", headers=admin).json()
    assert [d["id"] for d in listed] == [dataset["id"]]
    assert client.get("/v1/admin/datasets", headers=auth(people.dr_doe)).status_code == 403

    # A job names it: on its own (feedback=false), or besides the feedback since the champion.
    for body, detail in [
        ({"datasets": ["nope-123"]}, "no registered dataset"),
        ({"feedback": False}, "name one"),
        ({"datasets": ["../x"]}, "datasets"),
    ]:
        wrong = client.post("/v1/admin/finetunes", json={"plugin": PLUGIN, **body}, headers=admin)
        assert wrong.status_code == 422 and detail in wrong.text, wrong.text
    only = run_job(client, people, datasets=[dataset["id"]], feedback=False, epochs=1)
    assert only["status"] in ("succeeded", "rejected") and only["gate"] is not None, json.dumps(
        only, indent=2
    )
    assert only["dataset"]["curated"] == {dataset["id"]: 12}
    assert sum(only["dataset"]["counts"][split]["sft"] for split in ("train", "heldout")) == 12
    correct_reads(services, people, count=4)
    both = run_job(client, people, datasets=[dataset["id"]], epochs=1)
    assert both["status"] in ("succeeded", "rejected"), json.dumps(both, indent=2)
    counts = both["dataset"]["counts"]
    # Each correction is a supervised row and a correction-over-draft pair, besides the 12 curated rows.
    assert sum(counts[split]["sft"] for split in counts) == 12 + 4
    assert sum(counts[split]["pair"] for split in counts) == 4
    with services.sessions() as session:
        audited = [
            (e.action, e.resource_id)
            for e in session.scalars(select(AuditEntry).where(AuditEntry.resource == "dataset"))
        ]
    assert ("dataset.write", dataset["id"]) in audited and ("dataset.read", "*") in audited


def test_a_harmful_adapter_is_rejected_and_never_served(world) -> None:
    client, people, services = world
    correct_reads(services, people, shuffle=True)  # trained on the wrong findings
    job = run_job(client, people, epochs=12)
    assert job["status"] == "rejected" and job["gate"]["passed"] is False, json.dumps(job, indent=2)
    version = job["candidate_version"]
    refused = client.post(
        f"/v1/admin/adapters/{version}/promote", json={"reason": "try"}, headers=auth(people.admin)
    )
    assert refused.status_code == 409 and "override_gate" in refused.json()["detail"]
    assert ask(client, people)[1] != version
    assert services.model.info().adapter_versions[PLUGIN] == job["champion_version"]


def test_one_job_per_plugin_cancel_and_validation(world) -> None:
    client, people, services = world
    correct_reads(services, people, count=6)
    services.finetunes.config = services.finetunes.config.model_copy(update={"epochs": 500})
    first = client.post("/v1/admin/finetunes", json={"plugin": PLUGIN}, headers=auth(people.admin))
    assert first.status_code == 202
    second = client.post("/v1/admin/finetunes", json={"plugin": PLUGIN}, headers=auth(people.admin))
    assert second.status_code == 409 and second.headers["content-type"] == "application/problem+json"
    job_id = first.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()["progress"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelled = client.post(f"/v1/admin/finetunes/{job_id}/cancel", headers=auth(people.admin))
    assert cancelled.status_code == 202
    services.finetunes.wait(job_id, 60)
    job = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()
    assert job["status"] == "cancelled" and job["candidate_version"] is None
    assert client.post(f"/v1/admin/finetunes/{job_id}/cancel", headers=auth(people.admin)).status_code == 409
    # Only admins; bad bodies are 422.
    assert (
        client.post("/v1/admin/finetunes", json={"plugin": PLUGIN}, headers=auth(people.dr_doe)).status_code
        == 403
    )
    assert (
        client.post(
            "/v1/admin/finetunes", json={"plugin": PLUGIN, "epochs": 0}, headers=auth(people.admin)
        ).status_code
        == 422
    )
    assert (
        client.post("/v1/admin/finetunes", json={"plugin": "nope"}, headers=auth(people.admin)).status_code
        == 422
    )
    # Too little to train on is refused before a job exists, in the words the worker would use.
    jobs_before = len(client.get("/v1/admin/finetunes", headers=auth(people.admin)).json())
    too_few = client.post(
        "/v1/admin/finetunes", json={"plugin": PLUGIN, "min_examples": 10_000}, headers=auth(people.admin)
    )
    assert too_few.status_code == 422, too_few.text
    detail = too_few.json()["detail"]
    assert "training rows for method 'all'" in detail and "at least 10000" in detail, detail
    assert len(client.get("/v1/admin/finetunes", headers=auth(people.admin)).json()) == jobs_before
    again = client.post(  # 422 again, not 409: the refusal released the plugin's job lock
        "/v1/admin/finetunes", json={"plugin": PLUGIN, "min_examples": 10_000}, headers=auth(people.admin)
    )
    assert again.status_code == 422, again.text


def test_promotion_under_concurrent_requests_fails_none(world) -> None:
    client, people, services = world
    correct_reads(services, people)
    job = run_job(client, people)
    assert job["status"] == "succeeded", json.dumps(job, indent=2)
    from tools.healthgpt import AskRequest

    def one(_: int) -> str:
        return services.model.ask(AskRequest(question="hello", max_new_tokens=4)).provenance.adapter_version

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        promoted = client.post(
            f"/v1/admin/adapters/{job['candidate_version']}/promote",
            json={"reason": "load test"},
            headers=auth(people.admin),
        )
        rolled = client.post(
            f"/v1/admin/adapters/{PLUGIN}/rollback", json={"reason": "load test"}, headers=auth(people.admin)
        )
        versions = [f.result(timeout=120) for f in futures]  # raises on any failed request
    assert promoted.status_code == 200 and rolled.status_code == 200
    assert set(versions) <= {job["champion_version"], job["candidate_version"]}


def test_a_killed_worker_fails_the_job_and_leaves_the_champion(tmp_path, database_url, tiny_spec, regression):
    import os
    import signal

    settings = settings_for(tmp_path, database_url, regression, executor="process", epochs=500)
    prepare_database(settings).dispose()
    client, services = start(settings, HealthGPT(tiny_spec.model_copy(deep=True)))
    try:
        people = make_people(services)
        correct_reads(services, people, count=6)
        champion = services.model.info().adapter_versions[PLUGIN]
        job_id = client.post(
            "/v1/admin/finetunes", json={"plugin": PLUGIN}, headers=auth(people.admin)
        ).json()["id"]
        deadline = time.monotonic() + 120
        while True:
            progress = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()[
                "progress"
            ]
            if progress:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        import multiprocessing

        (child,) = [p for p in multiprocessing.active_children() if p.name == f"refresh-{job_id}"]
        os.kill(child.pid, signal.SIGKILL)
        services.finetunes.wait(job_id, 60)
        job = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()
        assert job["status"] == "failed" and "died" in job["error"]
        assert services.model.info().adapter_versions[PLUGIN] == champion
        assert [
            a["status"]
            for a in client.get("/v1/admin/adapters", headers=auth(people.admin)).json()["registered"]
        ] == ["champion"]
    finally:
        client.__exit__(None, None, None)
        services.close()


def test_a_job_outlives_a_gateway_restart(tmp_path, database_url, tiny_spec, regression) -> None:
    settings = settings_for(tmp_path, database_url, regression, stale_after_s=0.5)
    prepare_database(settings).dispose()
    client, services = start(settings, HealthGPT(tiny_spec.model_copy(deep=True)))
    people = make_people(services)
    correct_reads(services, people)
    # A job the previous gateway accepted and was running when it went away.
    with transaction(services.sessions) as session:
        from memory.users import cli_operator

        records = Records(session, cli_operator(session))
        champion = services.finetunes._ensure_champion(
            records, PLUGIN, services.model.info().adapter_versions
        )
        job = records.create_job(
            PLUGIN, {"method": "all", "min_examples": 4}, champion_version=champion.version
        )
        records.advance_job(job.id, JobStatus.running, "running", runner="gone-host:1:dead")
        job_id = job.id
    client.__exit__(None, None, None)
    services.close()
    time.sleep(0.6)
    client, services = start(settings, HealthGPT(tiny_spec.model_copy(deep=True)))  # the restart
    try:
        deadline = time.monotonic() + 10
        while job_id not in services.finetunes._threads:
            with services.sessions() as session:
                if session.get(FineTuneJob, job_id).status in (JobStatus.succeeded, JobStatus.rejected):
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        services.finetunes.wait(job_id, 300)
        result = client.get(f"/v1/admin/finetunes/{job_id}", headers=auth(people.admin)).json()
        assert result["status"] in ("succeeded", "rejected") and result["candidate_version"], result
        kinds = [
            e["kind"]
            for e in client.get(f"/v1/admin/finetunes/{job_id}/events", headers=auth(people.admin)).json()
        ]
        assert "resumed" in kinds
    finally:
        client.__exit__(None, None, None)
        services.close()
