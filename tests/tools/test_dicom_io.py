"""DICOM ingest: every file of pydicom's bundled corpus decodes or fails with a specific reason; the
pixel pipeline (modality LUT → VOI/window → MONOCHROME1) is checked numerically on datasets built here;
series ordering, size caps, the CLI, and metadata stripping of plain pictures."""

from __future__ import annotations

import io
import json
import os
import pickle
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageCms
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from typer.testing import CliRunner

from serving.cli import app
from tools.dicom_io import (
    REASONS,
    DamagedDicom,
    DicomError,
    NoImage,
    NotDicom,
    UnsupportedDicom,
    apply_window,
    frame_indices,
    load_dicom,
    load_series,
    read_dataset,
    slice_order,
)
from tools.images import UnsupportedImage, decode_upright, strip_metadata

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on odd test files

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "dicom-corpus.json"
# Only what get_testdata_files() lists is local; get_testdata_file() of another name may download.
LISTED = sorted(Path(p) for p in get_testdata_files())
CORPUS: dict[str, Path] = {}
for _path in LISTED:
    CORPUS.setdefault(_path.name, _path)

# The floor: files whose outcome is known and must not regress.
EXPECTED = {
    "CT_small.dcm": "decoded",
    "MR_small.dcm": "decoded",
    "MR_small_RLE.dcm": "decoded",
    "MR_small_bigendian.dcm": "decoded",
    "MR_small_implicit.dcm": "decoded",
    "MR_small_jp2klossless.dcm": "decoded",
    "MR_small_jpeg_ls_lossless.dcm": "decoded",
    "JPEG2000.dcm": "decoded",
    "JPGExtended.dcm": "decoded",
    "JPEGLSNearLossless_16.dcm": "decoded",
    "SC_rgb_rle.dcm": "decoded",
    "SC_rgb_jpeg.dcm": "decoded",
    "SC_rgb_jpeg_dcmtk.dcm": "decoded",
    "SC_rgb_jpeg_gdcm.dcm": "decoded",
    "SC_ybr_full_422_uncompressed.dcm": "decoded",
    "GDCMJ2K_TextGBR.dcm": "decoded",
    "examples_palette.dcm": "decoded",
    "examples_ybr_color.dcm": "decoded",
    "image_dfl.dcm": "decoded",
    "liver_1frame.dcm": "decoded",
    "rtdose.dcm": "decoded",
    "6154": "decoded",
    "MR_truncated.dcm": "truncated",
    "rtplan_truncated.dcm": "truncated",
    "JPEG-lossy.dcm": "corrupt_pixel_data",
    "badVR.dcm": "invalid_header",
    "meta_missing_tsyntax.dcm": "invalid_header",
    "DICOMDIR": "dicomdir",
    "DICOMDIR-implicit": "dicomdir",
    "rtplan.dcm": "no_pixel_data",
    "reportsi.dcm": "no_pixel_data",
    "waveform_ecg.dcm": "no_pixel_data",
    "no_meta.dcm": "not_dicom",
    "zipMR.gz": "not_dicom",
    "test1.json": "not_dicom",
    "crayons.icc": "not_dicom",
    "dicomdirtests": "unreadable",
}
FAMILY = {
    **dict.fromkeys(("not_dicom", "unreadable", "too_large"), NotDicom),
    **dict.fromkeys(("dicomdir", "no_pixel_data"), NoImage),
    **dict.fromkeys(
        ("unsupported_transfer_syntax", "unsupported_photometric", "mixed_series"), UnsupportedDicom
    ),
    **dict.fromkeys(("truncated", "corrupt_pixel_data", "invalid_header"), DamagedDicom),
}


def corpus(name: str) -> Path:
    return CORPUS[name]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# ------------------------------------------------------------------------------------- the corpus


def _check_decoded(path: Path, slices: int) -> str:
    """Decode ``path`` and check every picture; return its transfer syntax."""
    result = load_dicom(path, slices=slices)
    meta = result.metadata
    assert 1 <= len(result.images) <= slices
    assert meta.selected_slices == frame_indices(meta.frames, slices)
    for image, index in zip(result.images, meta.selected_slices, strict=True):
        array = pixels(image)
        assert array.dtype == np.uint8
        assert image.mode in ("L", "RGB")
        assert array.shape[:2] == (meta.rows, meta.columns)
        assert array.ndim == (2 if image.mode == "L" else 3)
        source = pixel_array(result.dataset, index=index)
        if np.ptp(source) > 0:
            assert np.ptp(array) > 0, f"{path.name}: a varying frame {index} came out constant"
    return meta.transfer_syntax


def test_every_corpus_file_decodes_or_fails_with_a_specific_reason() -> None:
    assert len(LISTED) > 150, "pydicom's bundled test files are missing"
    outcomes: dict[Path, str] = {}
    syntaxes: Counter[str] = Counter()
    slowest = 0.0
    for path in LISTED:
        started = time.perf_counter()
        try:
            syntaxes[_check_decoded(path, slices=3)] += 1
        except DicomError as exc:
            assert exc.reason in REASONS and str(exc), path
            assert type(exc) is FAMILY[exc.reason], (path, type(exc))
            outcomes[path] = exc.reason
        else:
            outcomes[path] = "decoded"
        elapsed = time.perf_counter() - started
        slowest = max(slowest, elapsed)
        assert elapsed < 5.0, f"{path.name} took {elapsed:.1f} s"

    counts = Counter(outcomes.values())
    by_name = {path.name: outcome for path, outcome in outcomes.items()}
    wrong = {name: by_name[name] for name, want in EXPECTED.items() if by_name[name] != want}
    assert not wrong, wrong
    assert counts["decoded"] >= 89

    errors = {reason: counts[reason] for reason in REASONS if counts[reason]}
    print(json.dumps({"decoded": counts["decoded"], "errors": errors, "slowest_file_s": round(slowest, 3)}))
    root = LISTED[0].parent
    report = {  # no timings: the file changes only when the figures do
        "benchmark": "dicom-corpus",
        "corpus": f"pydicom {pydicom.__version__} get_testdata_files() (local files only)",
        "entrypoint": "tools.dicom_io.load_dicom(path, slices=3)",
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "paths_listed": len(LISTED),
        "folders": sum(path.is_dir() for path in LISTED),
        "decoded": counts["decoded"],
        "errors": errors,
        "decoded_by_transfer_syntax": dict(sorted(syntaxes.items())),
        "error_files": {
            reason: sorted(str(p.relative_to(root)) for p, o in outcomes.items() if o == reason)
            for reason in errors
            if reason not in ("unreadable", "no_pixel_data")  # folders; reports, plans and headers
        },
    }
    if os.environ.get("HEALTHAGENT_RECORD_BENCH") == "1":  # a test run never rewrites recorded figures
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")


def test_ct_comes_out_in_hounsfield_units() -> None:
    result = load_dicom(corpus("CT_small.dcm"))
    meta = result.metadata
    assert (meta.modality, meta.value_unit, meta.photometric_interpretation) == ("CT", "HU", "MONOCHROME2")
    low, high = meta.value_range
    assert -1024 <= low < -500 and 500 < high < 3100  # air to bone, not raw stored values
    assert (meta.rows, meta.columns, meta.frames, meta.bits_stored) == (128, 128, 1, 16)
    assert meta.pixel_spacing == pytest.approx([0.661468, 0.661468])
    assert meta.transfer_syntax == "Explicit VR Little Endian"
    assert result.images[0].mode == "L"


def test_mr_and_its_compressed_copies_agree() -> None:
    reference = pixels(load_dicom(corpus("MR_small.dcm")).images[0])
    assert load_dicom(corpus("MR_small.dcm")).metadata.window_source == "window"
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ):
        assert np.array_equal(pixels(load_dicom(corpus(name)).images[0]), reference), name


def test_jpeg2000_decodes() -> None:
    result = load_dicom(corpus("JPEG2000.dcm"))
    assert result.metadata.transfer_syntax == "JPEG 2000 Image Compression"
    assert np.ptp(pixels(result.images[0])) > 0


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_rle.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
        "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422: pydicom upsamples and converts
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
        "SC_rgb_gdcm_KY.dcm",  # JPEG 2000
        "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS
        "SC_rgb_rle_16bit.dcm",  # 16 bits per sample, scaled to 8
    ],
)
def test_colour_files_come_out_as_true_rgb(name: str) -> None:
    """All are the same picture (colour bars); YBR left unconverted would be far off the RGB reference."""
    reference = pixels(load_dicom(corpus("SC_rgb_dcmtk_+eb+cr.dcm")).images[0]).astype(int)
    image = load_dicom(corpus(name)).images[0]
    assert image.mode == "RGB"
    array = pixels(image).astype(int)
    assert np.abs(array - reference).mean() < 4
    assert tuple(array[5, 50]) == pytest.approx((255, 0, 0), abs=3)  # the red bar stays red


def test_palette_colour_becomes_rgb() -> None:
    image = load_dicom(corpus("examples_palette.dcm")).images[0]
    array = pixels(image)
    assert image.mode == "RGB" and not np.array_equal(array[..., 0], array[..., 2])


def test_monochrome1_is_inverted() -> None:
    path = corpus("6154")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = pixels(load_dicom(path).images[0]).astype(float)
    assert np.corrcoef(ds.pixel_array.ravel(), out.ravel())[0, 1] < -0.9  # high values are dark


def test_multi_frame_gives_the_middle_or_evenly_spaced_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.dicom_io as dicom_io

    decoded: list[int] = []
    real = dicom_io._decode_frame

    def spy(ds: Dataset, geometry: object, index: int) -> object:
        decoded.append(index)
        return real(ds, geometry, index)

    monkeypatch.setattr(dicom_io, "_decode_frame", spy)
    path = corpus("rtdose.dcm")  # 15 frames
    middle = load_dicom(path)
    assert middle.metadata.frames == 15 and middle.metadata.slice_count == 15
    assert middle.metadata.selected_slices == [7] and len(middle.images) == 1
    assert decoded == [7]  # only the frame needed is decoded

    decoded.clear()
    spread = load_dicom(path, slices=3)
    assert spread.metadata.selected_slices == [0, 7, 14] and decoded == [0, 7, 14]
    assert np.array_equal(pixels(spread.images[1]), pixels(middle.images[0]))

    colour = load_dicom(corpus("examples_ybr_color.dcm"), slices=4)  # 30 frames of JPEG YBR_FULL_422
    assert colour.metadata.selected_slices == [0, 10, 19, 29]
    assert all(image.mode == "RGB" for image in colour.images)


def test_frame_indices() -> None:
    assert frame_indices(1, 5) == [0]
    assert frame_indices(10, 1) == [5]
    assert frame_indices(3, 10) == [0, 1, 2]
    assert frame_indices(101, 5) == [0, 25, 50, 75, 100]


# ---------------------------------------------------------------------- the pipeline, numerically


def _dataset(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    syntax: str = ExplicitVRLittleEndian,
    **attributes: object,
) -> Dataset:
    stored = np.atleast_2d(stored)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    frames = stored.shape[0] if stored.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(signed)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _synthetic(stored: object, **kwargs: object) -> bytes:
    return _encode(_dataset(np.asarray(stored), **kwargs))


# Stored values and, with slope 2 / intercept -1024, their Hounsfield units: -1024, 0, 76, 176, 1024.
STORED = [[0, 512, 550, 600, 1024]]
# LINEAR window c=40 w=400 on HU (PS3.3 C.11.2.1.2.1): lower edge c-0.5-(w-1)/2 = -160, upper 239;
# inside, ((x - 39.5) / 399 + 0.5) * 255: 0 HU → 102.26, 76 HU → 150.83, 176 HU → 214.74.
EXPECTED_8BIT = [0, 102, 151, 215, 255]


def test_rescale_then_window_gives_the_standard_values() -> None:
    data = _synthetic(STORED, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    result = load_dicom(data)
    assert pixels(result.images[0]).tolist() == [EXPECTED_8BIT]
    assert result.metadata.window_source == "window" and result.metadata.window == [40, 400]
    assert result.metadata.value_range == [-1024, 1024] and result.metadata.value_unit == "HU"
    # Windowing the stored values instead (the wrong order) would put stored 512 above the window.
    assert EXPECTED_8BIT[1] != 255


def test_multi_valued_window_uses_the_first_pair() -> None:
    data = _synthetic(
        STORED, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=[40, 400], WindowWidth=[400, 2000]
    )
    result = load_dicom(data)
    assert pixels(result.images[0]).tolist() == [EXPECTED_8BIT]
    assert result.metadata.window == [40, 400]


def test_monochrome1_inverts_after_the_window() -> None:
    data = _synthetic(
        STORED,
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    assert pixels(load_dicom(data).images[0]).tolist() == [[255 - v for v in EXPECTED_8BIT]]


def test_linear_exact_and_sigmoid_windows() -> None:
    values = np.array([-50.0, 0.0, 25.0, 50.0])
    assert np.rint(apply_window(values, 0, 100, "LINEAR_EXACT") * 255).tolist() == [0, 128, 191, 255]
    sigmoid = apply_window(values, 0, 100, "SIGMOID")
    assert sigmoid[1] == pytest.approx(0.5) and sigmoid[0] < 0.5 < sigmoid[2] < sigmoid[3] < 1
    data = _synthetic(
        [[-50, 0, 25, 50]], signed=True, WindowCenter=0, WindowWidth=100, VOILUTFunction="LINEAR_EXACT"
    )
    assert pixels(load_dicom(data).images[0]).tolist() == [[0, 128, 191, 255]]


def test_no_window_falls_back_to_a_robust_percentile_window() -> None:
    ramp = np.arange(10_000).reshape(100, 100)
    ramp[0, 0] = 60_000  # one hot pixel must not squash the rest
    result = load_dicom(_synthetic(ramp))
    out = pixels(result.images[0]).astype(int)
    assert result.metadata.window_source == "percentile"
    assert out[0, 1] == 0 and out[0, 0] == 255 and out[99, 99] == 255
    assert abs(int(out[50, 0]) - 128) <= 2  # the middle of the ramp is mid-grey


@pytest.mark.parametrize(
    "window",
    [{"WindowCenter": 40, "WindowWidth": 0}, {"WindowCenter": 1e6, "WindowWidth": 10}, {"WindowCenter": 40}],
    ids=["zero-width", "misses-the-data", "width-missing"],
)
def test_degenerate_or_missing_windows_fall_back(window: dict) -> None:
    result = load_dicom(_synthetic(np.arange(100).reshape(10, 10), **window))
    assert result.metadata.window_source == "percentile"
    assert np.ptp(pixels(result.images[0])) == 255


def test_constant_image_is_constant_not_an_error() -> None:
    result = load_dicom(_synthetic(np.full((4, 4), 7)))
    assert result.metadata.window_source == "constant" and np.ptp(pixels(result.images[0])) == 0


def test_float_pixel_data_with_nan_and_infinity() -> None:
    ds = _dataset(np.zeros((2, 3)))
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.array([[0, 1.5, np.nan], [3, np.inf, 10]], dtype="<f4").tobytes()
    result = load_dicom(_encode(ds))
    assert result.metadata.value_range == [0, 10]  # non-finite values shown as the lowest
    out = pixels(result.images[0])
    assert out[0, 2] == out[1, 1] == 0 and out[1, 2] == 255


def test_voi_lut_sequence_is_applied() -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUT Data: an inverting LUT
    data = _synthetic([[0, 100, 255, 400]], VOILUTSequence=Sequence([item]))
    result = load_dicom(data)
    assert result.metadata.window_source == "voi_lut"
    assert pixels(result.images[0]).tolist() == [[255, 155, 0, 0]]


def test_enhanced_functional_groups_give_per_frame_rescale_and_window() -> None:
    def group(**values: object) -> Dataset:
        item = Dataset()
        for keyword, value in values.items():
            setattr(item, keyword, value)
        return item

    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence(
        [group(RescaleSlope=2, RescaleIntercept=-1024, RescaleType="HU")]
    )
    shared.FrameVOILUTSequence = Sequence([group(WindowCenter=40, WindowWidth=400)])
    second = Dataset()
    second.FrameVOILUTSequence = Sequence([group(WindowCenter=1024, WindowWidth=4096)])
    volume = np.array([STORED, STORED])
    data = _synthetic(
        volume,
        SharedFunctionalGroupsSequence=Sequence([shared]),
        PerFrameFunctionalGroupsSequence=Sequence([Dataset(), second]),
    )
    result = load_dicom(data, slices=2)
    assert pixels(result.images[0]).tolist() == [EXPECTED_8BIT]  # shared rescale and window
    assert result.metadata.value_unit == "HU" and result.metadata.value_range == [-1024, 1024]
    # Frame 2 has its own window (reported: it is the middle of two); HU 0 sits at 0.25 of 4096 wide.
    assert result.metadata.window == [1024, 4096]
    assert pixels(result.images[1])[0, 1] == round((0 - 1023.5) / 4095 * 255 + 127.5)


# ---------------------------------------------------------------------------- errors and limits


@pytest.mark.parametrize("cut", [140, 401, 1000, 5000, 20_000, -100, -1])
def test_truncated_ct_is_reported_as_truncated(cut: int) -> None:
    """Any cut inside an element is caught; one exactly between two elements leaves a shorter but
    well-formed dataset, which no reader can tell from a complete one (it then lacks pixel data)."""
    data = corpus("CT_small.dcm").read_bytes()
    with pytest.raises(DamagedDicom) as caught:
        load_dicom(data[:cut])
    assert caught.value.reason == "truncated"


@pytest.mark.parametrize(
    "name", ["JPEG2000.dcm", "SC_rgb_jpeg.dcm", "examples_ybr_color.dcm", "image_dfl.dcm"]
)
def test_truncated_compressed_files_are_reported(name: str) -> None:
    """pydicom alone, not strict, returns an empty dataset for these: the structure walk catches them."""
    data = corpus(name).read_bytes()
    with pytest.raises(DicomError) as caught:
        load_dicom(data[: len(data) - 101])
    assert caught.value.reason == "truncated"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "too short"),
        (b"Patient: John Doe\n" * 20, "DICM"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "PNG"),
        (b"\x1f\x8b\x08" + bytes(200), "gzip"),
        (np.random.default_rng(0).bytes(4000), "DICM"),
    ],
    ids=["empty", "text", "png", "gzip", "random"],
)
def test_non_dicom_bytes_are_not_dicom(data: bytes, says: str) -> None:
    with pytest.raises(NotDicom, match=says) as caught:
        load_dicom(data)
    assert caught.value.reason == "not_dicom"


def test_size_cap_for_bytes_paths_and_streams() -> None:
    path = corpus("CT_small.dcm")
    data = path.read_bytes()
    with pytest.raises(NotDicom) as caught:
        load_dicom(data, max_bytes=1000)
    assert caught.value.reason == "too_large"
    with pytest.raises(NotDicom, match="limit"):
        load_dicom(path, max_bytes=1000)

    class Counting(io.BytesIO):
        taken = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            Counting.taken += len(chunk)
            return chunk

    with pytest.raises(NotDicom):
        load_dicom(Counting(data * 100), max_bytes=50_000)
    assert Counting.taken <= 50_001  # never read beyond the cap
    assert load_dicom(io.BytesIO(data)).metadata.modality == "CT"


def test_deflated_dataset_decodes_and_a_deflate_bomb_is_refused() -> None:
    ds = _dataset(np.zeros((1024, 1024)), syntax=DeflatedExplicitVRLittleEndian)
    ds.PixelData = (np.arange(1024 * 1024) % 251).astype("<u2").tobytes()
    data = _encode(ds)
    assert len(data) < 200_000  # 2 MiB of pixels, deflated
    assert load_dicom(data).metadata.transfer_syntax == "Deflated Explicit VR Little Endian"
    with pytest.raises(NotDicom, match="inflates") as caught:
        load_dicom(data, max_bytes=1_000_000)
    assert caught.value.reason == "too_large"


def test_frame_too_large_is_refused_before_decoding() -> None:
    ds = _dataset(np.zeros((2, 2)))
    ds.Rows = ds.Columns = 30_000
    with pytest.raises(NotDicom, match="too large") as caught:
        load_dicom(_encode(ds))
    assert caught.value.reason == "too_large"


def test_unknown_or_video_transfer_syntax_is_unsupported() -> None:
    ds = _dataset(np.zeros((2, 2)), syntax=MPEG2MPML)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UnsupportedDicom) as caught:
        load_dicom(_encode(ds))
    assert caught.value.reason == "unsupported_transfer_syntax"

    private = _dataset(np.zeros((2, 2)), syntax="1.2.826.0.1.3680043.99.1")
    buffer = io.BytesIO()
    private.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    with pytest.raises(UnsupportedDicom, match="unknown transfer syntax"):
        load_dicom(buffer.getvalue())


def test_unsupported_photometric_and_inconsistent_headers() -> None:
    with pytest.raises(UnsupportedDicom) as caught:
        load_dicom(_synthetic(np.zeros((2, 2)), photometric="HSV"))
    assert caught.value.reason == "unsupported_photometric"
    with pytest.raises(DamagedDicom, match="samples per pixel") as caught:
        load_dicom(_synthetic(np.zeros((2, 2)), photometric="RGB"))
    assert caught.value.reason == "invalid_header"
    # pydicom refuses to write a malformed DS, so patch the bytes: vendors do write such files.
    data = _synthetic(np.zeros((2, 2)), RescaleSlope="9.99", RescaleIntercept=0).replace(b"9.99", b"abcd")
    with pytest.raises(DamagedDicom, match="RescaleSlope") as caught:
        load_dicom(data)
    assert caught.value.reason == "invalid_header"


def test_errors_survive_pickling_with_their_reason() -> None:
    error = DicomError("truncated", "cut short")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, round-tripped
    assert type(copy) is DamagedDicom and copy.reason == "truncated" and str(copy) == "cut short"
    with pytest.raises(ValueError, match="not a reason"):
        DicomError("no_such_reason", "x")


def test_read_dataset_keeps_everything_for_deidentification() -> None:
    ds = read_dataset(corpus("CT_small.dcm"))
    assert "PatientName" in ds and "PixelData" in ds
    assert load_dicom(corpus("CT_small.dcm")).dataset.PatientName == ds.PatientName


# ------------------------------------------------------------------------------------------ series


def _slice(
    z: float, number: int, *, series: str = "1.2.3", orientation: list[float] | None = None
) -> Dataset:
    ds = _dataset(np.full((4, 4), int(z)), RescaleSlope=1, RescaleIntercept=0)
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = orientation or [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z] if orientation is None else [z, 0, 0]
    return ds


def test_series_is_sorted_along_the_slice_normal_not_by_instance_number() -> None:
    zs = [30, 10, 50, 20, 40]
    sources = [_encode(_slice(z, number)) for number, z in zip([1, 2, 3, 4, 5], zs, strict=True)]
    middle = load_series(sources)
    assert [float(ds.ImagePositionPatient[2]) for ds in middle.datasets] == [10, 20, 30, 40, 50]
    assert float(middle.dataset.ImagePositionPatient[2]) == 30
    assert middle.metadata.slice_count == 5 and middle.metadata.selected_slices == [2]
    spread = load_series(sources, slices=3)
    assert spread.metadata.selected_slices == [0, 2, 4] and len(spread.images) == 3
    assert spread.metadata.value_range == [10, 50]


def test_series_orders_oblique_stacks_and_falls_back_to_instance_number() -> None:
    sagittal = [0, 1, 0, 0, 0, -1]  # normal = row x column = (-1, 0, 0)
    datasets = [_slice(x, n, orientation=sagittal) for n, x in ((1, 5.0), (2, -5.0), (3, 0.0))]
    order = slice_order(datasets)
    assert [float(datasets[i].ImagePositionPatient[0]) for i in order] == [5.0, 0.0, -5.0]

    unplaced = [_slice(0, n) for n in (3, 1, 2)]
    for ds in unplaced:
        del ds.ImagePositionPatient
    assert [int(unplaced[i].InstanceNumber) for i in slice_order(unplaced)] == [1, 2, 3]


def test_series_from_real_files() -> None:
    folder = corpus("17106").parent  # dicomdirtests/77654033/CT2: four CT slices
    result = load_series(sorted(folder.iterdir()), slices=4)
    zs = [float(ds.ImagePositionPatient[2]) for ds in result.datasets]
    assert zs == sorted(zs) and len(result.images) == 4


def test_mixed_series_and_bad_members_are_refused() -> None:
    with pytest.raises(UnsupportedDicom) as caught:
        load_series([_encode(_slice(0, 1)), _encode(_slice(1, 2, series="9.9"))])
    assert caught.value.reason == "mixed_series"
    with pytest.raises(NoImage, match="DICOMDIR:"):
        load_series([corpus("CT_small.dcm"), corpus("DICOMDIR")])


# --------------------------------------------------------------------------------------------- CLI


runner = CliRunner()


def test_cli_info_prints_a_table_and_json() -> None:
    table = runner.invoke(app, ["dicom", "info", str(corpus("CT_small.dcm"))])
    assert table.exit_code == 0, table.output
    assert "modality" in table.stdout and "CT" in table.stdout and "Explicit VR Little Endian" in table.stdout

    as_json = runner.invoke(app, ["dicom", "info", str(corpus("CT_small.dcm")), "--json"])
    assert as_json.exit_code == 0
    fields = json.loads(as_json.stdout)
    assert fields["modality"] == "CT" and fields["rows"] == 128 and fields["value_unit"] == "HU"


def test_cli_info_writes_pngs(tmp_path: Path) -> None:
    out = tmp_path / "ct.png"
    result = runner.invoke(app, ["dicom", "info", str(corpus("CT_small.dcm")), "--png", str(out)])
    assert result.exit_code == 0 and f"wrote {out}" in result.stdout
    with Image.open(out) as image:
        assert image.mode == "L" and image.size == (128, 128)

    many = runner.invoke(
        app, ["dicom", "info", str(corpus("rtdose.dcm")), "--slices", "3", "--png", str(out), "--json"]
    )
    assert many.exit_code == 0, many.output
    written = json.loads(many.stdout)["png"]
    assert [Path(p).name for p in written] == ["ct-1.png", "ct-2.png", "ct-3.png"]
    assert all(Path(p).is_file() for p in written)


def test_cli_info_on_a_series_folder() -> None:
    result = runner.invoke(app, ["dicom", "info", str(corpus("17106").parent), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["slice_count"] == 4


@pytest.mark.parametrize(("name", "reason"), [("DICOMDIR", "dicomdir"), ("zipMR.gz", "not_dicom")])
def test_cli_info_errors_exit_2_naming_the_reason(name: str, reason: str) -> None:
    result = runner.invoke(app, ["dicom", "info", str(corpus(name))])
    assert result.exit_code == 2
    assert reason in result.stderr and result.stdout == ""


# ------------------------------------------------------------------ plain pictures: metadata out


def _jpeg_with_metadata() -> bytes:
    """40x20, a red block top-left, EXIF orientation 6 (rotate 90° clockwise to view), GPS, camera
    make, an ICC profile and a comment naming someone."""
    picture = Image.new("RGB", (40, 20), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0112] = 6  # Orientation
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.5)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=exif, icc_profile=srgb, comment=b"Patient John Doe", quality=95)
    return buffer.getvalue()


def test_jpeg_exif_is_applied_then_stripped() -> None:
    source = _jpeg_with_metadata()
    with Image.open(io.BytesIO(source)) as original:
        assert original.getexif().get_ifd(0x8825) and "comment" in original.info

    clean = strip_metadata(source)
    for needle in (b"Canon", b"Exif", b"John Doe", b"ICC_PROFILE", b"iCCP", b"eXIf", b"tEXt"):
        assert needle not in clean
    with Image.open(io.BytesIO(clean)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert not dict(image.getexif()) and not set(image.info) - {"dpi"}
        assert image.size == (20, 40)  # orientation 6 applied: now portrait
        red = np.asarray(image)[..., 0] > 200
        assert red[2:8, 12:18].all() and not red[2:8, 2:8].any()  # top-left block turned to top-right


def test_png_text_chunks_and_xmp_are_stripped() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Dr. House")
    info.add_itxt("Comment", "patient Jane Roe", zip=True)
    info.add_text("XML:com.adobe.xmp", "<x:xmpmeta>GPS 51N</x:xmpmeta>", zip=True)
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 6), (10, 20, 30, 255)).save(buffer, "PNG", pnginfo=info)
    clean = strip_metadata(buffer.getvalue())
    for needle in (b"House", b"Jane", b"xmp", b"tEXt", b"iTXt", b"zTXt"):
        assert needle not in clean
    upright = decode_upright(buffer.getvalue())
    assert upright.mode == "RGB" and upright.info == {} and upright.getpixel((0, 0)) == (10, 20, 30)


def test_strip_metadata_refuses_what_decode_image_refuses() -> None:
    with pytest.raises(UnsupportedImage, match="DICOM"):
        strip_metadata(corpus("CT_small.dcm").read_bytes())
    with pytest.raises(UnsupportedImage):
        strip_metadata(b"not a picture")
