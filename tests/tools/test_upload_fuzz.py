"""Malformed uploads through the real ingest path (read, de-identify, encode, decode; pictures stripped):
each defect found by fuzzing as a regression test, then a seeded fuzz of mutated real files
(``bench.fuzz``, the soak's own cases). A bad upload is a rejection with a reason, never another error."""

from __future__ import annotations

import copy
import io
import struct
import time
from collections import Counter

import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from bench.fuzz import (
    elements,
    fix_group_length,
    flat_png,
    ingest,
    make_cases,
    picture_seeds,
    set_length,
    set_value,
)
from tools.deid import EncodeError, encode_dicom
from tools.dicom_io import REASONS, DicomError, load_dicom, read_dataset, render_dataset
from tools.images import UnsupportedImage, decode_image, strip_metadata
from tools.intake import DicomRejected, ingest_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on every odd value

KEY = b"test-upload-fuzz-key-0123456789ab"
# What the ingest may answer: the DICOM reasons, the intake's own, and a refused picture.
KNOWN_REASONS = {*REASONS, "burned_in", "unsupported", "unsupported_image", "derived_object"}


def real(name: str) -> bytes:
    return open(get_testdata_file(name), "rb").read()


def element(data: bytes, tag: int):
    meta, body = elements(data)
    return next(el for el in meta + body if el.tag == tag)


def with_syntax(data: bytes, syntax: bytes) -> bytes:
    """``data`` with its Transfer Syntax UID rewritten (padded to even length, group length fixed)."""
    if len(syntax) % 2:
        syntax += b"\x00"
    return fix_group_length(set_value(data, element(data, 0x00020010), syntax))


def without(data: bytes, *tags: int) -> bytes:
    _, body = elements(data)
    for el in sorted((el for el in body if el.tag in tags), key=lambda el: -el.offset):
        data = data[: el.offset] + data[el.end :]
    return data


def rejected(data: bytes, burned_in: str = "refuse") -> DicomRejected:
    with pytest.raises(DicomRejected) as caught:
        ingest_dicom(data, key=KEY, burned_in=burned_in)
    assert caught.value.reason in KNOWN_REASONS
    return caught.value


@pytest.mark.parametrize("name", ["liver_1frame.dcm", "rtdose.dcm"])
def test_derived_objects_are_not_images_to_read(name: str) -> None:
    refusal = rejected(real(name))
    assert refusal.reason == "derived_object" and "upload the images it was made from" in str(refusal)
    # Told by the file meta alone as well, when the dataset does not repeat its SOP Class UID.
    assert rejected(without(real(name), 0x00080016)).reason == "derived_object"


# -------------------------------------------------------------------------- transfer syntax defects


@pytest.mark.parametrize("syntax", [b"", b"\x00", b"  "])
def test_empty_transfer_syntax_is_a_clear_rejection(syntax: bytes) -> None:
    """Was a 500: pydicom wrote the de-identified copy with an empty Transfer Syntax UID and failed."""
    refusal = rejected(with_syntax(real("CT_small.dcm"), syntax))
    assert refusal.reason == "invalid_header" and "Transfer Syntax UID" in str(refusal)


@pytest.mark.parametrize(
    "syntax",
    [
        b"1.2.3.4",
        b"1.2.840.10008.5.1.4.1.1.2",
        b"1.2.840.10008.1.2.4.999",
        b"garbage!",
        b"1.2.840.10008.1.2.1\xc4",
    ],
)
def test_invalid_transfer_syntax_is_unsupported(syntax: bytes) -> None:
    """Was a 500 ("… is not a valid transfer syntax") for a SOP class or unknown UID in its place."""
    refusal = rejected(with_syntax(real("CT_small.dcm"), syntax))
    assert refusal.reason == "unsupported_transfer_syntax" and "unknown transfer syntax" in str(refusal)


def test_compressed_syntax_over_native_pixels_and_back_are_refused() -> None:
    """Was a 500: the writer refuses native pixel data under a compressed syntax."""
    native = with_syntax(real("CT_small.dcm"), b"1.2.840.10008.1.2.4.50")
    assert "stored uncompressed" in str(rejected(native))
    fragments = with_syntax(real("JPEG2000.dcm"), b"1.2.840.10008.1.2.1")
    assert "compressed fragments" in str(rejected(fragments))


def test_encapsulated_pixel_data_without_its_first_item_is_corrupt() -> None:
    data = real("JPEG2000.dcm")
    pixels = element(data, 0x7FE00010)
    broken = data[: pixels.value_at] + b"\x00\x11\x22\x33" + data[pixels.value_at + 4 :]
    assert rejected(broken).reason == "corrupt_pixel_data"


def test_syntax_that_disagrees_with_the_byte_order_read_is_refused() -> None:
    """Was a 500: two damaged meta VRs make pydicom read a big endian file as (implicit) little endian;
    the copy could not be written in the declared big endian syntax."""
    data = real("MR_small_expb.dcm")
    version, title = element(data, 0x00020001), element(data, 0x00020016)
    damaged = data[: version.offset + 4] + b"SQ" + data[version.offset + 6 : title.offset + 4]
    damaged += b"\x91E" + data[title.offset + 6 :]
    refusal = rejected(damaged)
    assert refusal.reason == "invalid_header" and "endian" in str(refusal)


# ------------------------------------------------------------------------------- ambiguous VR pixels


def test_pixel_data_whose_vr_is_ambiguous_is_a_clear_rejection() -> None:
    """Was a 500: an implicit VR dataset under an explicit syntax, without Bits Allocated, keeps Pixel
    Data as 'OB or OW' (and Smallest Image Pixel Value as 'US or SS'): the explicit copy cannot be written."""
    explicit_over_implicit = with_syntax(real("MR_small_implicit.dcm"), b"1.2.840.10008.1.2.1")
    assert ingest_dicom(explicit_over_implicit, key=KEY).metadata["rows"] == 64  # the file itself is fine
    for gone in [(0x00280100,), (0x00280100, 0x00280103)]:
        refusal = rejected(without(explicit_over_implicit, *gone))
        assert refusal.reason == "invalid_header" and "pixel data cannot be read" in str(refusal)


# ------------------------------------------------------------------------- private element lengths


def with_private(data: bytes, declared: int, vr: bytes = b"OB", value: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A private block (creator + one element) in tag order, the element's length field lying."""
    meta, body = elements(data)
    at = next(el.offset for el in body if el.tag >> 16 > 0x0009 and el.offset >= meta[-1].end)
    creator = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 10) + b"FUZZ CORP "
    if vr in (b"OB", b"UN", b"SQ", b"UT"):
        private = struct.pack("<HH", 0x0009, 0x1001) + vr + b"\x00\x00" + struct.pack("<L", declared)
    else:
        private = struct.pack("<HH", 0x0009, 0x1001) + vr + struct.pack("<H", declared)
    return data[:at] + creator + private + value + data[at:]


@pytest.mark.parametrize(
    ("declared", "vr"),
    [
        (5, b"OB"),  # one past its value: swallows a byte of the next element's tag
        (3, b"OB"),  # one short and odd
        (1000, b"OB"),  # swallows the next elements whole
        (0x7FFFFFFF, b"OB"),  # past the end of the file
        (0xFFFFFFFF, b"OB"),  # undefined, without items
        (0xFFFFFFFF, b"SQ"),  # an undefined sequence whose "items" are the rest of the file
        (0xFFFFFFFF, b"UN"),
        (40, b"LO"),
        (0xFFFF, b"DS"),
    ],
)
def test_private_element_with_a_wrong_length_is_a_rejection_or_removed(declared: int, vr: bytes) -> None:
    """Was a 500 (OSError "No tag to read at file position …" from pydicom) for some of these."""
    for name in ("CT_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"):
        data = with_private(real(name), declared, vr)
        try:
            study = ingest_dicom(data, key=KEY)
        except DicomRejected as exc:
            assert exc.reason in KNOWN_REASONS and str(exc)
        else:  # read as a harmless private element: de-identification removed it
            assert b"FUZZ CORP" not in study.deidentified_dicom


def test_existing_private_element_made_too_long_is_refused() -> None:
    data = real("CT_small.dcm")
    private = next(el for el in elements(data)[1] if (el.tag >> 16) & 1 and el.tag & 0xFF00)
    # It swallows the start of the next element: what follows no longer parses as the image.
    assert rejected(set_length(data, private, private.length + 7)).reason in KNOWN_REASONS


# ---------------------------------------------------------------------------------- values and VRs


def test_meta_group_length_of_the_wrong_size_is_an_invalid_header() -> None:
    """Was a 500: pydicom's BytesLengthException (an Exception, not a ValueError) on the meta group."""
    data = real("CT_small.dcm")
    group_length = element(data, 0x00020000)
    damaged = set_value(data, group_length, b"\x01\x02\x03\x04\x05\x06")
    assert rejected(damaged).reason in ("invalid_header", "truncated")


@pytest.mark.parametrize("vr", [b"AT", b"DS", b"US", b"FD"])
def test_a_uid_written_with_another_vr_is_removed_not_fatal(vr: bytes) -> None:
    """Was a 500: Study Instance UID read as AT/DS/US, then remapped (a UID string into a number) or
    copied into the file meta (SOP Class UID as an int)."""
    data = real("CT_small.dcm")
    for tag in (0x0020000D, 0x00080016):
        el = element(data, tag)
        study = ingest_dicom(data[: el.offset + 4] + vr + data[el.offset + 6 :], key=KEY)
        written = pydicom.dcmread(io.BytesIO(study.deidentified_dicom))
        assert tag not in written or written[tag].VR == "UI"


def test_a_value_that_cannot_be_written_back_is_removed() -> None:
    """Was a 500: under UTF-8, an Instance Number holding a stray byte reads as '1\ufffd' but cannot be
    written (number strings are Latin-1): the element is removed, the rest written."""
    data = real("CT_small.dcm")
    data = set_value(data, element(data, 0x00200013), b"1\xff")
    data = set_value(data, element(data, 0x00080005), b"ISO_IR 192")
    study = ingest_dicom(data, key=KEY)
    written = pydicom.dcmread(io.BytesIO(study.deidentified_dicom))
    assert "InstanceNumber" not in written and study.deid_summary["removed"] >= 1
    assert written.PatientName != pydicom.dcmread(get_testdata_file("CT_small.dcm")).PatientName


def test_a_source_deidentification_method_with_an_odd_vr_is_replaced() -> None:
    """Was a 500 found by the soak (case 12,735): De-identification Method written as AT; stamping the
    method over it tried to turn the profile's name into a tag."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00120063, "LO", "ABCDEFGH")
    buffer = io.BytesIO()
    ds.save_as(buffer)
    data = buffer.getvalue()
    method = element(data, 0x00120063)
    data = data[: method.offset + 4] + b"AT" + data[method.offset + 6 :]
    written = pydicom.dcmread(io.BytesIO(ingest_dicom(data, key=KEY).deidentified_dicom))
    assert written["DeidentificationMethod"].VR == "LO" and "PS3.15" in written.DeidentificationMethod[0]


def test_encode_dicom_raises_its_own_error() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ""
    with pytest.raises(EncodeError, match="cannot be written as DICOM"):
        encode_dicom(ds)


# ------------------------------------------------------------------------------------ pixel codecs


def test_a_panicking_rle_codec_is_corrupt_pixel_data() -> None:
    """Was a crash past every handler: the Rust RLE decoder panics (pyo3 PanicException, a
    BaseException) on a segment that decodes past the frame."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    segments, first, second = struct.unpack("<3L", frame[:12])
    overlong = bytes([0x81, 0x00]) * 40  # 40 replicate runs of 128 bytes: 5120 > 64 x 64
    header = struct.pack("<16L", segments, first, first + len(overlong), *([0] * 13))
    ds.PixelData = encapsulate([header + frame[64:first] + overlong + frame[second:]])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(DicomError) as caught:
        load_dicom(buffer.getvalue())
    assert caught.value.reason == "corrupt_pixel_data"
    # The same file with burned-in text to blank: the blanking decode panics too, and is refused.
    ds.Modality = "US"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert rejected(buffer.getvalue(), burned_in="blank").reason in ("burned_in", "corrupt_pixel_data")


# ---------------------------------------------------------------------------------------- pictures


def test_tiff_with_a_rational_where_an_integer_belongs_is_unsupported() -> None:
    """Was a 500: PIL raised TypeError ('IFDRational' object cannot be interpreted as an integer)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 10).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    # Make the StripOffsets entry (tag 273) a RATIONAL (type 5) pointing at the header.
    count = struct.unpack_from("<H", data, struct.unpack_from("<L", data, 4)[0])[0]
    start = struct.unpack_from("<L", data, 4)[0] + 2
    for entry in range(count):
        at = start + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 273:
            struct.pack_into("<HHLL", data, at, 273, 5, 1, 8)
    with pytest.raises(UnsupportedImage):
        strip_metadata(bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        flat_png(60_000, 60_000, idat_rows=2),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"GIF89a\xff\xff\xff\xff" + b"\x00" * 30,
        b"BM" + b"\x00" * 60,
        b"",
    ],
    ids=["bomb-declared", "png-header-only", "gif-huge", "bmp-empty", "empty"],
)
def test_picture_bombs_and_broken_headers_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        strip_metadata(data)


def test_an_elongated_picture_is_unsupported() -> None:
    """Was a 504 and an out-of-memory kill found by the soak: a GIF whose header declares 65535x1 passed
    the pixel limit, then the model's resize of its short side to the input size made the long side
    millions of pixels (23 GB)."""
    strip = io.BytesIO()
    Image.new("RGB", (4000, 2), (10, 20, 30)).save(strip, format="PNG")
    with pytest.raises(UnsupportedImage, match="too elongated"):
        strip_metadata(strip.getvalue())
    with pytest.raises(UnsupportedImage, match="too elongated"):
        decode_image(strip.getvalue())


def test_the_model_gets_a_large_picture_shrunk() -> None:
    """A 24-megapixel upload is kept as sent; the model (it sees 336 px) gets at most 2048 px a side."""
    large = io.BytesIO()
    Image.new("RGB", (6000, 4000), (10, 20, 30)).save(large, format="JPEG")
    assert decode_image(large.getvalue()).size == (2048, 1365)


def test_an_elongated_dicom_frame_is_refused() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = 1, 8192
    ds.PixelData = bytes(2 * 8192)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(DicomError, match="too elongated") as caught:
        load_dicom(buffer.getvalue())
    assert caught.value.reason == "too_large"


def test_a_phone_jpeg_with_extra_frames_is_accepted() -> None:
    """A multi-picture JPEG (MPO, as phone cameras write) was refused as an unknown format: its first
    frame is the photo."""
    photo, depth = Image.new("RGB", (32, 24), (200, 10, 10)), Image.new("RGB", (32, 24), (0, 0, 0))
    buffer = io.BytesIO()
    photo.save(buffer, format="MPO", save_all=True, append_images=[depth])
    with Image.open(io.BytesIO(strip_metadata(buffer.getvalue()))) as stripped:
        assert stripped.format == "PNG" and stripped.getpixel((5, 5))[0] > 150


def test_the_soak_seed_pictures_are_accepted() -> None:
    """The fuzz starts from pictures the ingest takes (or refuses only for size)."""
    outcomes = {name: ingest(data).status for name, data in picture_seeds()}
    assert outcomes.pop("bomb-declared.png") == "rejected"
    assert set(outcomes.values()) == {"accepted"}, outcomes


# ------------------------------------------------------------------------------------- seeded fuzz


def test_seeded_fuzz_of_real_files_never_crashes_the_ingest() -> None:
    """3,000 cases of the soak (seed 13): byte flips, truncation, odd tag values, huge lengths, wrong or
    empty transfer syntaxes, damaged headers, broken pixel data, private elements with wrong lengths,
    pictures truncated, bombed, mis-sized or with the wrong magic. ~15 s on 2 cores."""
    outcomes: Counter[str] = Counter()
    crashes = []
    slowest = 0.0
    for case in make_cases(13, 3000):
        started = time.perf_counter()
        outcome = ingest(case.data, burned_in=case.burned_in)
        slowest = max(slowest, time.perf_counter() - started)
        outcomes[outcome.status] += 1
        if outcome.crashed:
            crashes.append(f"{case.label}: {outcome.reason}")
        elif outcome.status == "rejected":
            assert outcome.reason in KNOWN_REASONS, case.label
    assert not crashes, "\n".join(crashes[:20])
    # Not degenerate: the mutations leave some uploads whole and break the rest in many ways.
    assert outcomes["accepted"] >= 300 and outcomes["rejected"] >= 1500, outcomes
    assert slowest < 20, f"one case took {slowest:.1f} s"


def test_the_reader_gives_only_its_own_error_on_the_fuzz() -> None:
    """The reader alone (no de-identification first), on ~1,500 DICOM cases of another seed: pictures and
    metadata, or a DicomError, nothing else; the parsed dataset survives a deep copy."""
    for case in make_cases(29, 2000):
        if case.kind != "dicom":
            continue
        try:
            render_dataset(copy.deepcopy(read_dataset(case.data)), slices=2)
        except DicomError as exc:
            assert exc.reason in REASONS
        except BaseException as exc:  # noqa: BLE001 - the assertion is that nothing else arrives here
            pytest.fail(f"{case.label}: {type(exc).__name__}: {exc}")
