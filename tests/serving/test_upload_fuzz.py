"""Malformed uploads through the HTTP API in-process (FastAPI TestClient, SQLite, the tiny model): the
defects fuzzing found, a seeded fuzz of mutated real DICOM files and pictures (``bench.fuzz``) through a
physician's ``POST /v1/studies`` and a patient's ``POST /v1/chat``, and image tasks on the default
profile. A bad upload is a 4xx problem with a reason, never a 5xx, and the service answers afterwards."""

from __future__ import annotations

import io
import struct
import time
from collections import Counter

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from bench.fuzz import HttpTarget, make_cases, route_for
from tests.tools.test_upload_fuzz import real, with_private, with_syntax, without

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_model):
    target = HttpTarget.start(tmp_path_factory.mktemp("upload-fuzz"), tiny_model)
    yield target
    target.close()


def _rle_that_panics() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    segments, first, second = struct.unpack("<3L", frame[:12])
    overlong = bytes([0x81, 0x00]) * 40
    header = struct.pack("<16L", segments, first, first + len(overlong), *([0] * 13))
    ds.PixelData = encapsulate([header + frame[64:first] + overlong + frame[second:]])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


DEFECTS = {
    "empty transfer syntax": (with_syntax(real("CT_small.dcm"), b""), 422, "Transfer Syntax UID"),
    "SOP class as transfer syntax": (
        with_syntax(real("CT_small.dcm"), b"1.2.840.10008.5.1.4.1.1.2"),
        422,
        "unknown transfer syntax",
    ),
    "compressed syntax, native pixels": (
        with_syntax(real("CT_small.dcm"), b"1.2.840.10008.1.2.4.50"),
        422,
        "stored uncompressed",
    ),
    "ambiguous OB/OW pixel data": (
        without(with_syntax(real("MR_small_implicit.dcm"), b"1.2.840.10008.1.2.1"), 0x00280100),
        422,
        "pixel data cannot be read",
    ),
    "private element past the end": (with_private(real("CT_small.dcm"), 0x7FFFFFFF), 422, "cut short"),
    "private sequence of undefined length": (with_private(real("JPEG2000.dcm"), 0xFFFFFFFF, b"SQ"), 422, ""),
    "RLE codec panic": (_rle_that_panics(), 422, "pixel data cannot be decoded"),
}


@pytest.mark.parametrize("route", ["study", "chat"])
@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_each_defect_is_a_4xx_with_a_reason(api: HttpTarget, name: str, route: str) -> None:
    """Each was a 500 before (tests/tools/test_upload_fuzz.py has the ingest-level detail)."""
    data, status, fragment = DEFECTS[name]
    answered, detail = api.upload(data, route, name="study.dcm")
    assert answered == status, (answered, detail)
    assert fragment in detail and detail.startswith("study.dcm: ")


def test_a_damaged_tiff_is_a_415_for_a_patient(api: HttpTarget) -> None:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 10).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    start = struct.unpack_from("<L", data, 4)[0] + 2
    for entry in range(struct.unpack_from("<H", data, start - 2)[0]):
        if struct.unpack_from("<H", data, start + 12 * entry)[0] == 273:  # StripOffsets as a RATIONAL
            struct.pack_into("<HHLL", data, start + 12 * entry, 273, 5, 1, 8)
    status, detail = api.upload(bytes(data), "chat", name="photo.tif")
    assert status == 415 and "damaged" in detail


def test_the_elongated_gif_the_soak_found_is_a_quick_415(api: HttpTarget) -> None:
    """Soak case 2786 (seed 13): an animated GIF whose header declares 65535x1. It passed the pixel
    limit; the model's resize then took gigabytes (the soak was OOM-killed at 23 GB), or with less memory
    the request waited out the engine's timeout (504)."""
    (case,) = make_cases(13, 1, start=2786)
    started = time.perf_counter()
    status, detail = api.upload(case.data, "chat", name="animated.gif")
    assert status == 415 and "too elongated" in detail
    assert time.perf_counter() - started < 10


def test_seeded_upload_fuzz_never_answers_5xx(api: HttpTarget) -> None:
    """600 cases of the soak (seed 13) through both routes: every answer is the ingest's own verdict
    (2xx accepted, 4xx with a reason), never a 5xx; the service still answers afterwards. ~30 s on 2 cores."""
    statuses: Counter[int] = Counter()
    failures = []
    for case in make_cases(13, 600):
        route = route_for(case)
        status, detail = api.upload(case.data, route)
        statuses[status] += 1
        expected = api.expected(case.data, route)
        if status >= 500 or expected.crashed:
            failures.append(f"{case.label} via {route}: {status} {detail[:160]}")
        elif (status < 400) != (expected.status == "accepted"):
            failures.append(f"{case.label} via {route}: {status}, the ingest says {expected}")
        elif status >= 400:
            assert detail, case.label
    assert not failures, "\n".join(failures[:20])
    assert statuses[201] + statuses[200] >= 50 and sum(v for k, v in statuses.items() if k >= 400) >= 300
    assert set(statuses) <= {200, 201, 413, 415, 422}, statuses
    assert api.ready()


def test_a_study_that_grows_past_the_store_limit_when_blanked_is_a_413(tmp_path, tiny_model) -> None:
    target = HttpTarget.start(tmp_path, tiny_model, burned_in="blank", max_upload_bytes=1024 * 1024)
    try:
        upload = real("examples_ybr_color.dcm")  # 225 KB of JPEG; 6.9 MB once decompressed for blanking
        status, detail = target.upload(upload, "study")
        assert status == 413, (status, detail)
    finally:
        target.close()


# -------------------------------------------------------------------------- image tasks, default profile


def _consultation(api: HttpTarget) -> str:
    response = api.client.post(
        "/v1/consultations",
        json={"patient_id": api.patient_id},
        headers={"Authorization": f"Bearer {api.physician}"},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _image_task(api: HttpTarget, task: str, message: str, picture: bytes | None):
    url = f"/v1/consultations/{_consultation(api)}/messages"
    body = {"message": message, "request": "image_task", "image_task": task}
    headers = {"Authorization": f"Bearer {api.physician}"}
    if picture is None:
        return api.client.post(url, json=body, headers=headers)
    return api.client.post(
        url, data=body, files={"files": ("source.png", picture, "image/png")}, headers=headers
    )


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("task", "message"), [("ct_to_mri", "Convert this CT to MRI"), ("text_to_image", "A normal knee MRI")]
)
def test_image_tasks_work_on_the_default_profile(api: HttpTarget, task: str, message: str) -> None:
    """Was a 500 ("this model spec names no vqgan folder"): the tiny model now ships a tiny VQGAN."""
    response = _image_task(api, task, message, _png() if task != "text_to_image" else None)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route"] == "image_task" and body["tool_results"]["vq_tokens"] == 32 * 32
    with Image.open(io.BytesIO(api.services.pixels.get(body["tool_results"]["image_key"]))) as image:
        assert image.size == (256, 256)


def test_an_image_task_without_a_source_image_is_a_422(api: HttpTarget) -> None:
    """Was a 500 ("needs a source image")."""
    response = _image_task(api, "super_resolution", "Sharpen this please", None)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "super_resolution needs a source image" in response.json()["detail"]
    assert api.ready()
