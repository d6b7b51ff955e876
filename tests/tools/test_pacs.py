"""The PACS client against a real Orthanc (tests marked ``services``), its errors, the SR and Secondary
Capture builders, and the ``healthagent pacs`` commands."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydantic import ValidationError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from serving.cli.pacs import pacs_app
from tools.fhir import ReadProvenance, ReadReport, Signer
from tools.pacs import (
    BASIC_TEXT_SR,
    SECONDARY_CAPTURE,
    PacsClient,
    PacsConfig,
    PacsRejected,
    PacsTimeout,
    PacsUnavailable,
    StudyNotFound,
    StudyQuery,
    build_secondary_capture,
    build_text_sr,
    sr_text,
)

PROVENANCE = ReadProvenance(model="HealthGPT-M3", plugin="comprehension", adapter_version="2025.02-r1")
DOCTOR = Signer(id="u-42", name="Müller^Ada")


def _sample(name: str, **changes: object) -> Dataset:
    """A pydicom test file as a study, series and instance of its own, under a patient of its own, so
    tests sharing one Orthanc never see each other (Orthanc keys a study on patient and study UID)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.PatientID = f"pt-{uuid.uuid4().hex[:12]}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _read(study_uid: str, **changes: object) -> ReadReport:
    fields = {
        "study_uid": study_uid,
        "modality": "CT",
        "patient_reference": "Patient/pseudo-1",
        "findings": "Kein Rundherd. 右肺正常.",
        "impression": "No acute finding.",
        "provenance": PROVENANCE,
        "read_at": datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
    }
    return ReadReport(**(fields | changes))


@pytest.fixture
def pacs(orthanc_url: str) -> Iterator[PacsClient]:
    with PacsClient(PacsConfig(url=f"{orthanc_url}/dicom-web", timeout_s=10)) as client:
        yield client


@pytest.fixture
def ct_and_mr(pacs: PacsClient) -> tuple[Dataset, Dataset]:
    patient = f"pt-{uuid.uuid4().hex[:12]}"
    ct, mr = _sample("CT_small.dcm", PatientID=patient), _sample("MR_small.dcm", PatientID=patient)
    stored = pacs.store([ct, mr])
    assert stored == [ct.SOPInstanceUID, mr.SOPInstanceUID]
    return ct, mr


# --- against Orthanc --------------------------------------------------------------------------------------


@pytest.mark.services
def test_qido_finds_stored_studies_by_patient_modality_date_and_accession(
    pacs: PacsClient, ct_and_mr: tuple[Dataset, Dataset]
) -> None:
    ct, mr = ct_and_mr
    found = pacs.search_studies(StudyQuery(patient_id=ct.PatientID))
    assert {s.study_uid for s in found} == {ct.StudyInstanceUID, mr.StudyInstanceUID}

    only_mr = pacs.search_studies(StudyQuery(patient_id=ct.PatientID, modality="MR"))
    assert [(s.study_uid, s.modalities, s.study_date) for s in only_mr] == [
        (mr.StudyInstanceUID, ["MR"], "20040826")
    ]

    day = date(2004, 1, 19)  # CT_small's StudyDate
    by_date = pacs.search_studies(StudyQuery(patient_id=ct.PatientID, date_from=day, date_to=day))
    assert [s.study_uid for s in by_date] == [ct.StudyInstanceUID]
    open_ended = pacs.search_studies(StudyQuery(patient_id=ct.PatientID, date_from=date(2004, 6, 1)))
    assert [s.study_uid for s in open_ended] == [mr.StudyInstanceUID]

    accession = f"ACC{uuid.uuid4().hex[:8]}"
    pacs.store([_sample("CT_small.dcm", AccessionNumber=accession)])
    by_accession = pacs.search_studies(StudyQuery(accession_number=accession))
    assert len(by_accession) == 1 and by_accession[0].accession_number == accession


@pytest.mark.services
def test_series_of_a_study(pacs: PacsClient, ct_and_mr: tuple[Dataset, Dataset]) -> None:
    ct, _ = ct_and_mr
    series = pacs.search_series(ct.StudyInstanceUID)
    assert [(s.series_uid, s.modality, s.instance_count) for s in series] == [(ct.SeriesInstanceUID, "CT", 1)]


@pytest.mark.services
def test_wado_returns_the_original_pixels(pacs: PacsClient, ct_and_mr: tuple[Dataset, Dataset]) -> None:
    for original in ct_and_mr:
        (copy,) = pacs.retrieve_study(original.StudyInstanceUID)
        assert copy.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(copy.pixel_array, original.pixel_array)


@pytest.mark.services
def test_dataset_without_preamble_is_stored_as_a_dicom_file(pacs: PacsClient) -> None:
    # Written as pydicom's defaults have it, Orthanc would keep bytes that WADO cannot serve as DICOM.
    original = _sample("CT_small.dcm")
    original.preamble = None
    pacs.store([original])
    (copy,) = pacs.retrieve_study(original.StudyInstanceUID)
    assert np.array_equal(copy.pixel_array, original.pixel_array)
    assert original.preamble is None  # the caller's dataset is left alone


@pytest.mark.services
def test_wado_keeps_a_compressed_study_as_stored(pacs: PacsClient) -> None:
    # This Orthanc cannot transcode JPEG 2000: asking for the default transfer syntax would fail (HTTP 500).
    original = _sample("JPEG2000.dcm")
    pacs.store([original])
    (copy,) = pacs.retrieve_study(original.StudyInstanceUID)
    assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert np.array_equal(copy.pixel_array, original.pixel_array)


@pytest.mark.services
def test_sr_and_secondary_capture_land_in_the_source_study(
    pacs: PacsClient, ct_and_mr: tuple[Dataset, Dataset]
) -> None:
    ct, _ = ct_and_mr
    sources = pacs.retrieve_study(ct.StudyInstanceUID)
    read = _read(ct.StudyInstanceUID)
    generated = np.random.default_rng(0).integers(0, 256, size=(31, 17, 3), dtype=np.uint8)
    sr = build_text_sr(read, sources)
    sc = build_secondary_capture(generated, sources[0], PROVENANCE)
    assert pacs.store([sr, sc]) == [sr.SOPInstanceUID, sc.SOPInstanceUID]

    series = {s.modality: s for s in pacs.search_series(ct.StudyInstanceUID)}
    assert set(series) == {"CT", "SR", "OT"}
    assert series["SR"].series_uid == sr.SeriesInstanceUID and series["OT"].series_uid == sc.SeriesInstanceUID

    back = {ds.SOPInstanceUID: ds for ds in pacs.retrieve_study(ct.StudyInstanceUID)}
    sr_back, sc_back = back[sr.SOPInstanceUID], back[sc.SOPInstanceUID]

    assert sr_back.SOPClassUID == BASIC_TEXT_SR and sr_back.PatientID == ct.PatientID
    assert (sr_back.VerificationFlag, sr_back.PreliminaryFlag, sr_back.CompletionFlag) == (
        "UNVERIFIED",
        "PRELIMINARY",
        "COMPLETE",
    )
    assert "VerifyingObserverSequence" not in sr_back
    assert sr_text(sr_back) == {"Finding": "Kein Rundherd. 右肺正常.", "Impression": "No acute finding."}
    evidence = sr_back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ct.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        ct.SOPInstanceUID
    )

    assert sc_back.SOPClassUID == SECONDARY_CAPTURE and sc_back.ConversionType == "SYN"
    assert "HealthGPT-M3" in sc_back.DerivationDescription and "2025.02-r1" in sc_back.DerivationDescription
    assert sc_back.SourceImageSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID
    assert np.array_equal(sc_back.pixel_array, generated)


@pytest.mark.services
def test_signed_sr_is_verified(pacs: PacsClient, ct_and_mr: tuple[Dataset, Dataset]) -> None:
    ct, _ = ct_and_mr
    signed = _read(ct.StudyInstanceUID).sign(DOCTOR, at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC))
    sr = build_text_sr(signed, [ct], organization="St. Elsewhere")
    pacs.store([sr])
    back = next(
        ds for ds in pacs.retrieve_study(ct.StudyInstanceUID) if ds.SOPInstanceUID == sr.SOPInstanceUID
    )
    assert (back.VerificationFlag, back.PreliminaryFlag) == ("VERIFIED", "FINAL")
    observer = back.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Müller^Ada"
    assert observer.VerifyingOrganization == "St. Elsewhere"
    assert observer.VerificationDateTime.startswith("20250301120000")


@pytest.mark.services
@pytest.mark.parametrize("shape", [(7, 5), (64, 48, 3)])  # 35 bytes: odd, padded
def test_generated_image_decodes_to_the_same_pixels(pacs: PacsClient, shape: tuple[int, ...]) -> None:
    source = _sample("CT_small.dcm")
    pacs.store([source])
    pixels = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    image = Image.fromarray(pixels)  # a PIL image, as the generation plugin returns
    series = generate_uid()
    first = build_secondary_capture(image, source, PROVENANCE, series_uid=series)
    second = build_secondary_capture(pixels, source, PROVENANCE, series_uid=series, instance_number=2)
    pacs.store([first, second])
    generated = [s for s in pacs.search_series(source.StudyInstanceUID) if s.modality == "OT"]
    assert [(s.series_uid, s.instance_count) for s in generated] == [(series, 2)]
    for ds in pacs.retrieve_study(source.StudyInstanceUID):
        if ds.Modality == "OT":
            assert np.array_equal(ds.pixel_array, pixels)


@pytest.mark.services
def test_unknown_study_is_not_found(pacs: PacsClient) -> None:
    with pytest.raises(StudyNotFound):
        pacs.retrieve_study("1.2.826.0.1.3680043.8.498.404")
    with pytest.raises(StudyNotFound):
        pacs.search_series("1.2.826.0.1.3680043.8.498.404")
    assert pacs.search_studies(StudyQuery(patient_id="nobody-here")) == []


@pytest.mark.services
def test_refused_instance_is_rejected(pacs: PacsClient) -> None:
    broken = _sample("CT_small.dcm")
    del broken.SOPInstanceUID  # Orthanc cannot index an instance without its UID
    with pytest.raises(PacsRejected, match="HTTP 400"):
        pacs.store([broken])


@pytest.mark.services
def test_wrong_dicomweb_root_is_unavailable(orthanc_url: str) -> None:
    with PacsClient(PacsConfig(url=f"{orthanc_url}/not-dicom-web", timeout_s=5)) as client:
        with pytest.raises(PacsUnavailable, match="no DICOMweb service"):
            client.search_studies()


@pytest.mark.services
def test_cli_store_search_retrieve(orthanc_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHAGENT_PACS__URL", f"{orthanc_url}/dicom-web")
    runner = CliRunner()
    original = _sample("MR_small.dcm")
    source = tmp_path / "in" / "mr.dcm"
    source.parent.mkdir()
    original.save_as(source)

    stored = runner.invoke(pacs_app, ["store", str(source)])
    assert stored.exit_code == 0, stored.output
    assert stored.stdout.split() == [original.SOPInstanceUID]

    found = runner.invoke(pacs_app, ["search", "--patient-id", original.PatientID, "--modality", "mr"])
    assert found.exit_code == 0, found.output
    (row,) = found.stdout.splitlines()
    assert row.split("\t")[:4] == [original.StudyInstanceUID, "20040826", original.PatientID, "MR"]

    series = runner.invoke(pacs_app, ["search", "--study", original.StudyInstanceUID, "--json"])
    assert original.SeriesInstanceUID in series.stdout

    out = tmp_path / "out"
    got = runner.invoke(pacs_app, ["retrieve", original.StudyInstanceUID, str(out)])
    assert got.exit_code == 0, got.output
    (written,) = out.iterdir()
    assert written.name == f"{original.SOPInstanceUID}.dcm"
    assert np.array_equal(pydicom.dcmread(written).pixel_array, original.pixel_array)

    missing = runner.invoke(pacs_app, ["retrieve", "1.2.826.0.1.3680043.8.498.404", str(out)])
    assert missing.exit_code == 2 and "no study" in missing.output


# --- without a PACS ---------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed when the block ends: connections are refused


def test_unreachable_pacs_fails_fast() -> None:
    started = time.monotonic()
    with PacsClient(PacsConfig(url=f"http://127.0.0.1:{_closed_port()}/dicom-web", timeout_s=5)) as client:
        with pytest.raises(PacsUnavailable, match="cannot reach"):
            client.search_studies(StudyQuery(patient_id="x"))
    assert time.monotonic() - started < 2


def test_silent_pacs_times_out() -> None:
    # Accepts the connection, never answers: only the read timeout ends the wait.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/dicom-web"
        started = time.monotonic()
        with PacsClient(PacsConfig(url=url, timeout_s=0.5)) as client:
            with pytest.raises(PacsTimeout, match=r"within 0\.5s"):
                client.retrieve_study("1.2.3.4")
        assert time.monotonic() - started < 3
        for connection in accepted:
            connection.close()


def test_config_needs_both_credentials_and_an_http_url() -> None:
    with pytest.raises(ValidationError):
        PacsConfig(url="http://pacs:8042/dicom-web", username="alice")
    with pytest.raises(ValidationError):
        PacsConfig(url="ftp://pacs/dicom-web")
    config = PacsConfig(url="http://pacs:8042/dicom-web/", username="alice", password="s3cret")
    assert config.root == "http://pacs:8042/dicom-web"
    assert "s3cret" not in repr(config)


def test_query_filters() -> None:
    query = StudyQuery(
        patient_id="p1",
        date_from=date(2024, 1, 2),
        date_to=date(2024, 2, 3),
        modality="CT",
        accession_number="A1",
    )
    assert query.filters() == {
        "PatientID": "p1",
        "StudyDate": "20240102-20240203",
        "ModalitiesInStudy": "CT",
        "AccessionNumber": "A1",
    }
    assert StudyQuery(date_from=date(2024, 1, 2), date_to=date(2024, 1, 2)).filters() == {
        "StudyDate": "20240102"
    }
    assert StudyQuery(date_to=date(2024, 1, 2)).filters() == {"StudyDate": "-20240102"}


def test_sr_refuses_sources_of_another_study() -> None:
    ct = _sample("CT_small.dcm")
    with pytest.raises(ValueError, match="other studies"):
        build_text_sr(_read("1.2.826.0.1.3680043.8.498.7"), [ct])
    with pytest.raises(ValueError, match="at least one"):
        build_text_sr(_read(ct.StudyInstanceUID), [])


def test_amended_sr_is_verified_and_names_the_ai_observer() -> None:
    ct = _sample("CT_small.dcm")
    later = datetime(2025, 3, 1, 9, 30, tzinfo=UTC) + timedelta(hours=3)
    amended = _read(ct.StudyInstanceUID).sign(DOCTOR, at=later).sign(DOCTOR, at=later, impression="Edited.")
    sr = build_text_sr(amended, [ct])
    assert sr.VerificationFlag == "VERIFIED" and sr_text(sr)["Impression"] == "Edited."
    observer_type = sr.ContentSequence[0]
    assert observer_type.RelationshipType == "HAS OBS CONTEXT"
    assert observer_type.ConceptCodeSequence[0].CodeMeaning == "Device"


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((4, 4), dtype=np.float32), "uint8"),
        (np.zeros((4, 4, 4), dtype=np.uint8), "shape"),
        (np.zeros((0, 4), dtype=np.uint8), "size"),
    ],
)
def test_secondary_capture_refuses_unusable_pixels(pixels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_secondary_capture(pixels, _sample("CT_small.dcm"), PROVENANCE)


def test_cli_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEALTHAGENT_PACS__URL", raising=False)
    result = CliRunner().invoke(pacs_app, ["search"])
    assert result.exit_code != 0 and "--url" in result.output


def test_cli_reports_an_unreachable_pacs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHAGENT_PACS__URL", f"http://127.0.0.1:{_closed_port()}/dicom-web")
    result = CliRunner().invoke(pacs_app, ["search", "--date", "20240101-"])
    assert result.exit_code == 2 and "cannot reach" in result.output
    bad_date = CliRunner().invoke(pacs_app, ["search", "--date", "yesterday"])
    assert bad_date.exit_code == 2 and "YYYYMMDD" in bad_date.output


def test_malformed_uids_never_reach_the_pacs(tmp_path: Path) -> None:
    # A closed port: a request would raise PacsUnavailable, so ValueError proves none was sent.
    with PacsClient(PacsConfig(url=f"http://127.0.0.1:{_closed_port()}/dicom-web")) as client:
        for bad in ["../instances", "", "1.2.abc", "1.02.3", "1." + "2" * 70]:
            with pytest.raises(ValueError, match="not a DICOM UID"):
                client.retrieve_study(bad)
            with pytest.raises(ValueError, match="not a DICOM UID"):
                client.search_series(bad)
    result = CliRunner().invoke(pacs_app, ["retrieve", "../x", str(tmp_path), "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "not a DICOM UID" in result.output
