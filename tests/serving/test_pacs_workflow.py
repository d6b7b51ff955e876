"""The physician's workflow end to end on a real Orthanc, over HTTP, on SQLite and PostgreSQL: a study
imported from the PACS by UID, read over several slices, signed back into the ORIGINAL study as a DICOM
SR, amended (the second SR replaces the first), served as FHIR R4; the PACS down or slow; a push that
fails while the PACS is away stays pending and is delivered when it is back."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from memory.audit import AuditEntry
from memory.schema import PacsImport, Study
from tests.agents.scenarios.conftest import auth
from tests.serving.conftest import open_api
from tests.tools.conftest import OrthancServer
from tools.dicom_io import frame_indices
from tools.fhir import parse_bundle, validate_bundle
from tools.pacs import BASIC_TEXT_SR, PacsClient, PacsConfig, sr_text

pytestmark = pytest.mark.services
SLICES = 12


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc of this module's own: the fault tests stop and start it."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-workflow"))
    server.start()
    yield server
    server.stop()


def _pacs(orthanc: OrthancServer) -> PacsClient:
    return PacsClient(PacsConfig(url=f"{orthanc.base}/dicom-web", timeout_s=10))


def ct_series(count: int = SLICES) -> list[Dataset]:
    """``count`` CT slices of one series, each its own picture, 5 mm apart, under a patient of their own
    (tests sharing the Orthanc never see each other's studies)."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    patient, study, series = f"pt-{uuid.uuid4().hex[:10]}", generate_uid(), generate_uid()
    slices = []
    for n in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [-158.0, -179.0, float(-50 + 5 * n)]
        pixels = base.pixel_array.astype(np.int16) + np.int16(10 * n)
        ds.PixelData = pixels.tobytes()
        slices.append(ds)
    return slices


def multiframe(frames: int = 10) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID, ds.StudyInstanceUID = f"pt-{uuid.uuid4().hex[:10]}", generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    stack = np.stack([ds.pixel_array + np.int16(20 * i) for i in range(frames)]).astype(np.int16)
    ds.NumberOfFrames = frames
    ds.PixelData = stack.tobytes()
    return ds


@pytest.fixture
def api(tmp_path: Path, database_url: str, tiny_model, orthanc: OrthancServer):
    client, services, people = open_api(
        tmp_path,
        database_url,
        tiny_model,
        pacs={
            "url": f"{orthanc.base}/dicom-web",
            "timeout_s": 3,
            "retries": 0,
            "read_slices": 4,
            "retry_initial_s": 0.2,
            "retry_max_s": 0.5,
            "outbox_poll_s": 0.2,
        },
    )
    yield client, people, services
    client.__exit__(None, None, None)
    services.close()


def import_series(client, people, series: list[Dataset], **extra) -> dict:
    body = {"study_instance_uid": series[0].StudyInstanceUID, "patient_id": people.pam_patient_id, **extra}
    answer = client.post("/v1/studies/import", json=body, headers=auth(people.dr_doe))
    assert answer.status_code == 201, answer.text
    return answer.json()


def read_study(client, people, study_id: int) -> dict:
    answer = client.post(f"/v1/studies/{study_id}/reads", headers=auth(people.dr_doe))
    assert answer.status_code == 201, answer.text
    return client.get(f"/v1/reads/{answer.json()['read_id']}", headers=auth(people.dr_doe)).json()


def signoff(client, people, read_id: int, **body) -> dict:
    answer = client.post(f"/v1/reads/{read_id}/signoff", json=body, headers=auth(people.dr_doe))
    assert answer.status_code == 200, answer.text
    return answer.json()


def until_delivered(fetch: typing.Callable[[], dict], status_of, deadline_s: float = 30.0) -> dict:
    """What ``fetch`` shows once ``status_of`` it says delivered. The sign-off tries the PACS once at once
    and may find it slow (a loaded machine, a 3 s timeout here): the push then waits in the outbox and is
    retried, which is the behaviour under test too, so a first "pending" is no failure."""
    deadline = time.monotonic() + deadline_s
    while True:
        shown = fetch()
        if status_of(shown) == "delivered" or time.monotonic() > deadline:
            return shown
        time.sleep(0.2)


def read_delivered(client, people, read_id: int) -> dict:
    shown = until_delivered(
        lambda: client.get(f"/v1/reads/{read_id}", headers=auth(people.dr_doe)).json(),
        lambda read: (read["pacs_report"] or {}).get("status"),
    )
    assert shown["pacs_report"]["status"] == "delivered", shown["pacs_report"]
    return shown


def imported_read(client, people, orthanc: OrthancServer, count: int = 3) -> tuple[list[Dataset], dict]:
    """A new series in the PACS, imported and read: (its instances, the preliminary read)."""
    series = ct_series(count)
    with _pacs(orthanc) as pacs:
        pacs.store(series)
    study = import_series(client, people, series)
    return series, read_study(client, people, study["id"])


def stored_srs(orthanc: OrthancServer, study_uid: str) -> list[Dataset]:
    with _pacs(orthanc) as pacs:
        return [ds for ds in pacs.retrieve_study(study_uid) if ds.SOPClassUID == BASIC_TEXT_SR]


def referenced_sops(sr: Dataset) -> list[str]:
    return [
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]


def test_import_read_sign_amend_and_fhir(api, orthanc: OrthancServer) -> None:
    client, people, services = api
    series = ct_series()
    shuffled = series[:]
    random.Random(7).shuffle(shuffled)  # stored out of order: the intake sorts by position
    with _pacs(orthanc) as pacs:
        pacs.store(shuffled)
    study_uid = series[0].StudyInstanceUID

    study = import_series(client, people, series)
    metadata = study["metadata"]
    assert metadata["slice_count"] == SLICES and len(metadata["read_slices"]) == 4
    # The original UIDs are kept server-side, never in what the model or the caller's study shows.
    shown = json.dumps(study)
    assert study_uid not in shown and all(ds.SOPInstanceUID not in shown for ds in series)
    with services.sessions() as session:
        origin = session.scalar(select(PacsImport).where(PacsImport.study_id == study["id"]))
        assert origin.study_uid == study_uid
        assert [sop for _, sop in origin.instances] == [ds.SOPInstanceUID for ds in series]  # slice order
        assert session.get(Study, study["id"]).source == "pacs"

    read = read_study(client, people, study["id"])
    chosen = [i + 1 for i in frame_indices(SLICES, 4)]
    assert read["provenance"]["slices_read"] == chosen
    assert f"4 of {SLICES} slices read" in read["ai_draft"]
    assert read["pacs_report"] is None  # nothing to push before sign-off

    signed = signoff(client, people, read["id"], action="sign")
    assert signed["tool_results"]["pacs_report"]["status"] in ("delivered", "pending")
    read_delivered(client, people, read["id"])
    (first,) = stored_srs(orthanc, study_uid)
    assert first.StudyInstanceUID == study_uid and first.PatientID == series[0].PatientID
    assert (
        first.VerificationFlag == "VERIFIED"
        and first.VerifyingObserverSequence[0].VerifyingObserverName == "dr_doe"
    )
    assert sr_text(first)["Finding"].startswith("- Slice")
    assert referenced_sops(first) == [series[n - 1].SOPInstanceUID for n in chosen]
    amended = signoff(
        client, people, read["id"], action="correct", text="Findings: none.\nImpression: Normal."
    )
    assert amended["tool_results"]["pacs_report"]["report_status"] == "amended"
    read_delivered(client, people, read["id"])
    second = next(ds for ds in stored_srs(orthanc, study_uid) if ds.SOPInstanceUID != first.SOPInstanceUID)
    assert sr_text(second) == {"Finding": "none.", "Impression": "Normal."}
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID

    # FHIR: the report (amended), and the patient's searchset with Provenance naming the AI and physician.
    one = client.get(f"/fhir/r4/DiagnosticReport/{read['id']}", headers=auth(people.dr_doe))
    assert one.status_code == 200, one.text
    assert one.headers["content-type"].startswith("application/fhir+json")
    assert one.json()["status"] == "amended" and one.json()["id"] == str(read["id"])
    found = client.get(
        f"/fhir/r4/DiagnosticReport?patient=Patient/{people.pam_patient_id}", headers=auth(people.pam)
    )
    assert found.status_code == 200 and found.headers["content-type"].startswith("application/fhir+json")
    bundle = validate_bundle(parse_bundle(found.text))
    assert bundle.type == "searchset" and bundle.total == 1
    kinds = {e.resource.get_resource_type(): e.resource for e in bundle.entry}
    agents = {a.type.coding[0].code: a.who.reference for a in kinds["Provenance"].agent}
    assert set(agents) == {"author", "verifier"}
    assert kinds["Device"] and kinds["Practitioner"].name[0].text == "dr_doe"


def test_fhir_access_and_statuses(api, orthanc: OrthancServer) -> None:
    client, people, _ = api
    _, read = imported_read(client, people, orthanc)
    url = f"/fhir/r4/DiagnosticReport/{read['id']}"
    assert client.get(url, headers=auth(people.dr_doe)).json()["status"] == "preliminary"
    # Patients: nothing preliminary; another patient's report is 404 like a missing one; audited.
    assert client.get(url, headers=auth(people.pam)).status_code == 404
    assert client.get(url, headers=auth(people.pete)).status_code == 404
    assert client.get(url, headers=auth(people.dr_who)).status_code == 404
    assert client.get("/fhir/r4/DiagnosticReport/999999", headers=auth(people.dr_doe)).status_code == 404
    search = f"/fhir/r4/DiagnosticReport?patient={people.pam_patient_id}"
    assert client.get(search, headers=auth(people.pete)).status_code == 404
    assert client.get(search, headers=auth(people.pam)).json()["total"] == 0
    signoff(client, people, read["id"], action="sign")
    mine = client.get(url, headers=auth(people.pam))
    assert mine.status_code == 200 and mine.json()["status"] == "final"
    assert client.get(url, headers=auth(people.pete)).status_code == 404
    own = client.get("/fhir/r4/DiagnosticReport", headers=auth(people.pam)).json()
    assert own["total"] == 1
    services = client.app.state.services
    with services.sessions() as session:
        denied = session.scalars(select(AuditEntry).where(AuditEntry.outcome == "denied")).all()
    assert any(row.resource_id == str(read["id"]) for row in denied)


def test_import_access_and_search(api, orthanc: OrthancServer) -> None:
    client, people, services = api
    series = ct_series(2)
    with _pacs(orthanc) as pacs:
        pacs.store(series)
    body = {"study_instance_uid": series[0].StudyInstanceUID, "patient_id": people.pam_patient_id}
    assert client.post("/v1/studies/import", json=body, headers=auth(people.pam)).status_code == 403
    assert client.post("/v1/studies/import", json=body, headers=auth(people.dr_who)).status_code == 404
    missing = {**body, "study_instance_uid": generate_uid()}
    assert client.post("/v1/studies/import", json=missing, headers=auth(people.dr_doe)).status_code == 404
    bad = {**body, "study_instance_uid": "1.2.3/../x"}
    assert client.post("/v1/studies/import", json=bad, headers=auth(people.dr_doe)).status_code == 422
    with services.sessions() as session:
        assert session.scalars(select(Study)).all() == []

    query = {"patient_id": series[0].PatientID, "modality": "CT"}
    assert client.get("/v1/pacs/studies", params=query, headers=auth(people.pam)).status_code == 403
    found = client.get("/v1/pacs/studies", params=query, headers=auth(people.dr_doe))
    assert found.status_code == 200, found.text
    assert [s["study_instance_uid"] for s in found.json()] == [series[0].StudyInstanceUID]
    with services.sessions() as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.action == "pacs.read")).all()
    assert rows and rows[-1].detail["filters"]["PatientID"] == series[0].PatientID


def test_multiframe_upload_is_read_over_its_frames(api) -> None:
    client, people, _ = api
    data = _bytes(multiframe(10))
    answer = client.post(
        "/v1/studies",
        data={"patient_id": str(people.pam_patient_id)},
        files={"file": ("mf.dcm", data, "application/dicom")},
        headers=auth(people.dr_doe),
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["metadata"]["slice_count"] == 10
    read = read_study(client, people, answer.json()["id"])
    assert read["provenance"]["slices_read"] == [i + 1 for i in frame_indices(10, 4)]


def _bytes(ds: Dataset) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- faults --------------------------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a PACS that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pacs_down_or_slow_answers_502_504_and_stores_nothing(
    tmp_path: Path, database_url: str, tiny_model, silent_port: int
) -> None:
    for url, status in (
        (f"http://127.0.0.1:{_closed_port()}/dicom-web", 502),
        (f"http://127.0.0.1:{silent_port}/dicom-web", 504),
    ):
        client, services, people = open_api(
            tmp_path / str(status), database_url.replace("test.db", f"{status}.db"), tiny_model,
            pacs={"url": url, "timeout_s": 0.5, "retries": 0},
        )  # fmt: skip
        try:
            body = {"study_instance_uid": generate_uid(), "patient_id": people.pam_patient_id}
            answer = client.post("/v1/studies/import", json=body, headers=auth(people.dr_doe))
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert int(answer.headers["Retry-After"]) > 0
            assert "127.0.0.1" not in answer.text
            search = client.get("/v1/pacs/studies", headers=auth(people.dr_doe))
            assert search.status_code == status
            with services.sessions() as session:
                assert session.scalars(select(Study)).all() == []
        finally:
            client.__exit__(None, None, None)
            services.close()


def test_push_while_the_pacs_is_away_is_pending_then_delivered(api, orthanc: OrthancServer) -> None:
    client, people, _ = api
    series, read = imported_read(client, people, orthanc)
    orthanc.stop()
    try:
        signed = signoff(client, people, read["id"], action="correct", text="No acute findings.")
        assert signed["tool_results"]["pacs_report"]["status"] == "pending"
        time.sleep(0.6)  # the worker retries meanwhile, and fails
        shown = client.get(f"/v1/reads/{read['id']}", headers=auth(people.dr_doe)).json()
        assert shown["status"] == "final" and shown["pacs_report"]["status"] == "pending"
        assert shown["pacs_report"]["attempts"] >= 2 and shown["pacs_report"]["last_error"]
    finally:
        orthanc.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shown = client.get(f"/v1/reads/{read['id']}", headers=auth(people.dr_doe)).json()
        if shown["pacs_report"]["status"] == "delivered":
            break
        time.sleep(0.2)
    assert shown["pacs_report"]["status"] == "delivered"
    (sr,) = stored_srs(orthanc, series[0].StudyInstanceUID)
    assert (
        sr_text(sr)["Finding"] == "No acute findings."
        and sr.SOPInstanceUID == shown["pacs_report"]["sr_instance_uid"]
    )
