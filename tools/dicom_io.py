"""DICOM ingest: a file, an upload or a series becomes 8-bit pictures for the model plus plain metadata.

The pixel pipeline runs in the standard order: the modality LUT (rescale slope/intercept, e.g. to
Hounsfield units), then the VOI LUT or the window centre/width (a robust 0.5-99.5 percentile window
where the file has none, or a degenerate one), then MONOCHROME1 inversion. Colour images (RGB, YBR,
palette) come out as RGB. Multi-frame files and series give the middle slice or N evenly spaced ones;
only the frames needed are decoded.

Every failure is a :class:`DicomError` whose ``reason`` is a short code from :data:`REASONS` and whose
message a user can act on. Nothing here de-identifies: :class:`DicomImage` keeps the dataset so that
``tools.deid`` can.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, get_args

import numpy as np
import pydicom
from PIL import Image
from pydantic import BaseModel
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_FRAME_PIXELS = 64 * 1024 * 1024  # same bound as tools.images: stops decompression bombs
MAX_ASPECT = 32  # same bound as tools.images: a 1x65535 frame would blow up in the model's resize
MAX_SLICES = 64
PERCENTILE_WINDOW = (0.5, 99.5)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

Reason = Literal[
    "not_dicom",
    "unreadable",
    "too_large",
    "dicomdir",
    "no_pixel_data",
    "invalid_header",
    "unsupported_transfer_syntax",
    "unsupported_photometric",
    "truncated",
    "corrupt_pixel_data",
    "mixed_series",
]
REASONS: tuple[str, ...] = get_args(Reason)
# Where the grey-level mapping came from: the file's VOI LUT or window, else the robust fallbacks.
WindowSource = Literal["voi_lut", "window", "percentile", "min_max", "constant", "none"]


class DicomError(ValueError):
    """A DICOM input this system cannot turn into a picture; ``reason`` is one of :data:`REASONS`.

    Constructing ``DicomError(reason, message)`` gives the subclass that matches the reason, so callers
    may catch a whole family (e.g. :class:`DamagedDicom`) or branch on ``reason``.
    """

    reason: str

    def __new__(cls, reason: str, message: str = "") -> DicomError:
        family = _FAMILY.get(reason)
        if family is None or not issubclass(family, cls):
            raise ValueError(f"{reason!r} is not a reason of {cls.__name__}")
        return super().__new__(family, message)

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[DicomError], tuple[str, str]]:
        # Keeps the reason when pickled (errors cross process boundaries under Ray Serve).
        return type(self), (self.reason, str(self))


class NotDicom(DicomError):
    """not_dicom, unreadable, too_large: the input never got as far as a DICOM dataset."""


class NoImage(DicomError):
    """dicomdir, no_pixel_data: a valid DICOM object that holds no picture (report, plan, index…)."""


class UnsupportedDicom(DicomError):
    """unsupported_transfer_syntax, unsupported_photometric, mixed_series: valid, but not handled here."""


class DamagedDicom(DicomError):
    """truncated, corrupt_pixel_data, invalid_header: the file is broken."""


_FAMILY: dict[str, type[DicomError]] = {
    **dict.fromkeys(("not_dicom", "unreadable", "too_large"), NotDicom),
    **dict.fromkeys(("dicomdir", "no_pixel_data"), NoImage),
    **dict.fromkeys(
        ("unsupported_transfer_syntax", "unsupported_photometric", "mixed_series"), UnsupportedDicom
    ),
    **dict.fromkeys(("truncated", "corrupt_pixel_data", "invalid_header"), DamagedDicom),
}


class DicomMetadata(BaseModel):
    """What the model and the UI may know about the picture; nothing here names the patient."""

    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    sop_class: str = ""
    photometric_interpretation: str = ""
    transfer_syntax: str = ""
    transfer_syntax_uid: str = ""
    rows: int = 0
    columns: int = 0
    samples_per_pixel: int = 1
    bits_allocated: int | None = None
    bits_stored: int | None = None
    frames: int = 1
    slice_count: int = 1  # slices in the volume: frames of one file, or files of a series
    selected_slices: list[int] = []  # which of them the images are, in slice order
    pixel_spacing: list[float] | None = None  # mm, row then column
    slice_thickness: float | None = None
    value_unit: str = ""  # "HU" for CT after the modality LUT, else Rescale Type when given
    value_range: list[float] | None = None  # [min, max] after the modality LUT, over the selected slices
    window_source: WindowSource = "none"
    window: list[float] | None = None  # [centre, width] applied, file's or percentile's
    burned_in_annotation: str = ""  # the file's own claim (YES/NO), for the de-identification step


@dataclass(frozen=True)
class DicomImage:
    images: list[Image.Image]  # "L" or "RGB", 8 bits
    metadata: DicomMetadata
    dataset: Dataset  # the (middle) source dataset, pixels included, for de-identification
    datasets: list[Dataset] = field(default_factory=list)  # a series: every instance, in slice order


# --------------------------------------------------------------------------------------------- reading


def _read_capped(source: bytes | bytearray | memoryview | Path | str | BinaryIO, max_bytes: int) -> bytes:
    """The raw bytes of ``source``; never more than ``max_bytes`` + 1 are read."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) > max_bytes:
            raise DicomError("too_large", f"the file is larger than the {max_bytes}-byte limit")
        return bytes(source)
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            if path.is_dir():
                raise DicomError("unreadable", f"{path.name} is a folder, not a file")
            if path.exists() and not path.is_file():
                raise DicomError("unreadable", f"{path.name} is not a regular file")
            if path.stat().st_size > max_bytes:
                raise DicomError("too_large", f"{path.name} is larger than the {max_bytes}-byte limit")
            with path.open("rb") as stream:  # still capped: the file may grow while being read
                data = stream.read(max_bytes + 1)
        except OSError as exc:
            raise DicomError("unreadable", f"cannot read {path.name}: {exc.strerror or exc}") from exc
    else:
        data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DicomError("too_large", f"the file is larger than the {max_bytes}-byte limit")
    return data


def _not_dicom_message(data: bytes) -> str:
    """Say what the bytes look like instead, when that is cheap to tell."""
    head = data[:16]
    hints = {
        b"\x1f\x8b": "a gzip archive; decompress it first",
        b"PK\x03\x04": "a zip archive; extract the DICOM files first",
        b"\x89PNG": "a PNG picture; upload it as an image",
        b"\xff\xd8\xff": "a JPEG picture; upload it as an image",
    }
    for magic, hint in hints.items():
        if head.startswith(magic):
            return f"not a DICOM file: it is {hint}"
    if head.lstrip()[:1] in (b"{", b"["):
        return "not a DICOM file: it looks like JSON (DICOM JSON is not accepted)"
    if len(data) < 132:
        return f"not a DICOM file: only {len(data)} bytes, too short for the DICOM file header"
    if head[:2] in (b"\x08\x00", b"\x00\x08"):
        return "not a DICOM file: a bare dataset without the DICOM file header (preamble and 'DICM')"
    return "not a DICOM file: no 'DICM' marker after the 128-byte preamble"


class _Overrun(Exception):
    """An element runs past the end of the bytes."""


class _Unparsable(Exception):
    """The element structure is odd in a way this scan does not judge; pydicom gets the last word."""


_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)


def _looks_implicit(buf: bytes, pos: int) -> bool:
    """pydicom's own heuristic: an explicit VR is two upper-case letters after the tag."""
    vr = buf[pos + 4 : pos + 6]
    return len(vr) == 2 and not (vr.isalpha() and vr.isupper())


def _skip_elements(buf: bytes, pos: int, implicit: bool, little: bool, nested: bool) -> int:
    """Walk data elements from ``pos`` and return the offset after them; raise :class:`_Overrun` if one
    runs past the end (pydicom, non-strict, would quietly return a partial or even empty dataset)."""
    end = "<" if little else ">"
    size = len(buf)
    implicit = implicit or _looks_implicit(buf, pos)
    while pos < size:
        if pos + 8 > size:
            raise _Overrun
        group, element = struct.unpack_from(end + "HH", buf, pos)
        if (group, element) == _ITEM_END:
            if not nested:
                raise _Unparsable
            return pos + 8
        vr = b""
        if implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(end + "L", buf, pos + 4)
            pos += 8
        else:
            vr = buf[pos + 4 : pos + 6]
            if not (vr.isalpha() and vr.isupper()):
                raise _Unparsable
            if vr in _LONG_VRS:
                if pos + 12 > size:
                    raise _Overrun
                (length,) = struct.unpack_from(end + "L", buf, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from(end + "H", buf, pos + 6)
                pos += 8
        if length == _UNDEFINED:
            # A sequence, UN holding one (always implicit inside), or encapsulated pixel data: items.
            pos = _skip_items(buf, pos, implicit or vr == b"UN", little)
        elif pos + length > size:
            raise _Overrun
        else:
            pos += length
    if nested:
        raise _Overrun  # the bytes ended inside an item of undefined length
    return pos


def _skip_items(buf: bytes, pos: int, implicit: bool, little: bool) -> int:
    end = "<" if little else ">"
    while True:
        if pos + 8 > len(buf):
            raise _Overrun
        group, element, length = struct.unpack_from(end + "HHL", buf, pos)
        pos += 8
        if (group, element) == _SEQ_END:
            return pos
        if (group, element) != _ITEM:
            raise _Unparsable
        if length == _UNDEFINED:
            pos = _skip_elements(buf, pos, implicit, little, nested=True)
        elif pos + length > len(buf):
            raise _Overrun
        else:
            pos += length


def _scan_meta(data: bytes) -> tuple[int, str | None]:
    """Offset where the dataset starts and the Transfer Syntax UID, from the file meta group (always
    explicit VR little endian); ``(-1, None)`` when the meta is too odd to judge here."""
    pos, syntax = 132, None
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return pos, syntax
        vr = data[pos + 4 : pos + 6]
        if not (vr.isalpha() and vr.isupper()):
            return -1, None
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise _Overrun
            (length,) = struct.unpack_from("<L", data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        if length == _UNDEFINED or pos + length > len(data):
            raise _Overrun
        if element == 0x0010:
            syntax = data[pos : pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += length
    if pos < len(data):
        raise _Overrun
    return pos, syntax  # nothing but file meta


def _inflate(body: bytes, max_bytes: int) -> bytes:
    """Deflated transfer syntax: inflate with a bound (pydicom inflates without one: a zip bomb)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise DicomError("truncated", f"the deflated dataset is damaged or cut short: {exc}") from exc
    if len(out) > max_bytes:
        raise DicomError("too_large", f"the deflated dataset inflates beyond the {max_bytes}-byte limit")
    if not inflater.eof:
        raise DicomError("truncated", "the deflated dataset is cut short")
    return out


def _check_complete(data: bytes, max_bytes: int) -> None:
    """Raise ``truncated`` when an element of the file runs past its end."""
    try:
        start, syntax = _scan_meta(data)
        if start < 0:
            return
        body = data[start:]
        uid = UID(syntax or "")
        implicit, little = False, True
        if uid == DeflatedExplicitVRLittleEndian:
            body = _inflate(body, max_bytes)
        elif uid.is_transfer_syntax:
            implicit, little = uid.is_implicit_VR, uid.is_little_endian
        if body:
            _skip_elements(body, 0, implicit, little, nested=False)
    except _Overrun as exc:
        raise DicomError("truncated", "the DICOM file is cut short: an element runs past its end") from exc
    except (_Unparsable, RecursionError):
        return


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message fit for a user: one line, bounded (pydicom's can run to paragraphs)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_codec_panic(exc: BaseException) -> bool:
    """A Rust codec (pylibjpeg-rle, -openjpeg) that panics raises pyo3's PanicException, a BaseException:
    it would pass every ``except Exception`` up to the server."""
    return type(exc).__name__ == "PanicException"


def read_dataset(
    source: bytes | bytearray | memoryview | Path | str | BinaryIO, max_bytes: int = MAX_UPLOAD_BYTES
) -> Dataset:
    """Parse a DICOM Part 10 file (bytes, a path or an open binary stream) without reading more than
    ``max_bytes``; raises :class:`DicomError`: not_dicom, unreadable, too_large, truncated, invalid_header,
    unsupported_transfer_syntax.

    The file must name a known Transfer Syntax that agrees with how its pixel data is stored (nothing
    can be decoded, nor written back, otherwise). Top-level values are converted here, so that a value
    pydicom cannot read surfaces now and not in a later caller: such an element is dropped (it names
    nothing and de-identification would drop it too); the rest of the dataset is kept as read."""
    data = _read_capped(source, max_bytes)
    if len(data) < 132 or data[128:132] != b"DICM":
        raise DicomError("not_dicom", _not_dicom_message(data))
    _check_complete(data, max_bytes)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise DicomError("not_dicom", f"not a DICOM file: {_first_line(exc)}") from exc
    except (EOFError, zlib.error) as exc:
        raise DicomError("truncated", f"the DICOM file is cut short: {_first_line(exc)}") from exc
    except MemoryError as exc:
        raise DicomError("too_large", "the DICOM header declares more data than can be held") from exc
    except Exception as exc:  # pydicom on hostile bytes raises OSError, its own types, …
        raise DicomError("invalid_header", f"the DICOM header cannot be parsed: {_first_line(exc)}") from exc
    _check_transfer_syntax(ds)
    _drop_unreadable(ds)
    return ds


def _check_transfer_syntax(ds: Dataset) -> None:
    """A known Transfer Syntax UID, and pixel data stored as it says (encapsulated or native)."""
    meta = getattr(ds, "file_meta", None)
    try:
        value = meta.get("TransferSyntaxUID") if meta is not None else None
        syntax = UID(str(value).strip("\x00 ")) if value else None
    except Exception as exc:  # a malformed meta element
        raise DicomError(
            "invalid_header", f"the Transfer Syntax UID cannot be read: {_first_line(exc)}"
        ) from exc
    if not syntax:
        raise DicomError("invalid_header", "the file meta information has no Transfer Syntax UID")
    if not syntax.is_transfer_syntax:
        shown = repr(str(syntax)[:64])
        raise DicomError("unsupported_transfer_syntax", f"unknown transfer syntax {shown}")
    _implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is not None and little != syntax.is_little_endian:
        # pydicom follows the bytes; nothing can write such a dataset back (nor trust its numbers).
        found = "little" if little else "big"
        raise DicomError(
            "invalid_header",
            f"the Transfer Syntax ({syntax.name}) does not match the dataset, which is {found} endian",
        )
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag not in ds:
            continue
        try:
            item = ds.get_item(tag)  # raw: its length as written, before any conversion
        except Exception as exc:  # get_item converts some values (an unknown VR fails)
            raise DicomError("invalid_header", f"the pixel data cannot be read: {_first_line(exc)}") from exc
        undefined = item.is_undefined_length if isinstance(item, DataElement) else item.length == 0xFFFFFFFF
        if syntax.is_encapsulated and tag == 0x7FE00010 and not undefined:
            raise DicomError(
                "invalid_header",
                f"the Transfer Syntax ({syntax.name}) says the pixel data is compressed, "
                "but it is stored uncompressed",
            )
        if not syntax.is_encapsulated and undefined:
            raise DicomError(
                "invalid_header",
                f"the Transfer Syntax ({syntax.name}) says the pixel data is uncompressed, "
                "but it is stored as compressed fragments",
            )
        if undefined:
            try:
                value = ds[tag].value
            except Exception:  # noqa: BLE001 - unreadable is as bad as malformed here
                value = None
            if not (isinstance(value, bytes | bytearray) and value[:4] == b"\xfe\xff\x00\xe0"):
                # Encapsulated pixel data opens with the Basic Offset Table item (PS3.5 A.4).
                raise DicomError(
                    "corrupt_pixel_data", "the compressed pixel data does not start with an item"
                )


def _drop_unreadable(ds: Dataset) -> None:
    """Convert every top-level value now; drop the elements whose value cannot be read, except the
    pixel data, whose loss would be misreported later as a file without pixels."""
    for tag in list(ds.keys()):
        try:
            ds[tag]
        except Exception as exc:  # any conversion failure: the value is unusable either way
            if int(tag) in (0x7FE00010, 0x7FE00008, 0x7FE00009):
                # e.g. implicit VR pixel data without Bits Allocated: OB or OW cannot be told apart.
                raise DicomError(
                    "invalid_header", f"the pixel data cannot be read: {_first_line(exc)}"
                ) from exc
            del ds[tag]


# ------------------------------------------------------------------------------------ header checks


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    frames: int
    photometric: str
    syntax: UID


_MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# What a malformed LUT makes pydicom raise while applying it.
_LUT_ERRORS = (ValueError, TypeError, AttributeError, IndexError, KeyError, struct.error)


@contextmanager
def _header_errors() -> Iterator[None]:
    """pydicom converts values lazily, on first access; a malformed one surfaces there (as any type:
    hostile values reach code paths that were never meant to fail)."""
    try:
        yield
    except DicomError:
        raise
    except MemoryError as exc:
        raise DicomError("too_large", "the header declares more data than can be held") from exc
    except Exception as exc:  # the upload is at fault, not the server
        raise DicomError("invalid_header", f"a header value cannot be read: {_first_line(exc)}") from exc


def _number(ds: Dataset, keyword: str, default: float | None = None) -> float:
    """A numeric attribute; missing uses ``default`` (or is an error), malformed is an error."""
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise DicomError("invalid_header", f"the image has no {keyword}")
        return default
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else default
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise DicomError("invalid_header", f"{keyword} {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise DicomError("invalid_header", f"{keyword} {value!r} is not a finite number")
    return number


def _integer(ds: Dataset, keyword: str, default: int | None = None) -> int:
    number = _number(ds, keyword, None if default is None else float(default))
    if number != int(number):
        raise DicomError("invalid_header", f"{keyword} {number} is not a whole number")
    return int(number)


def _sop_class_name(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return UID(str(uid)).name if uid else ""


def _check_image(ds: Dataset) -> _Geometry:
    """The Image Pixel module, validated before any decoding is attempted."""
    meta = getattr(ds, "file_meta", None)
    sop_classes = {
        str(ds.get("SOPClassUID", "")),
        str(meta.get("MediaStorageSOPClassUID", "") if meta else ""),
    }
    if DICOMDIR_SOP_CLASS in sop_classes or "DirectoryRecordSequence" in ds:
        raise DicomError(
            "dicomdir",
            "a DICOMDIR is an index of a DICOM medium, not an image; open the image files it lists",
        )
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        kind = _sop_class_name(ds) or "this DICOM object"
        if "Rows" in ds and "Columns" in ds:  # image attributes but no pixels: cut on an element boundary?
            raise DicomError(
                "no_pixel_data",
                f"{kind} has image attributes but no pixel data (a header-only export, or cut short)",
            )
        raise DicomError("no_pixel_data", f"{kind} holds no image (no pixel data)")
    syntax_value = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax_value:
        raise DicomError("invalid_header", "the file meta information has no Transfer Syntax UID")
    syntax = UID(str(syntax_value))
    if not syntax.is_transfer_syntax:
        raise DicomError("unsupported_transfer_syntax", f"unknown transfer syntax {syntax}")
    rows, columns = _integer(ds, "Rows"), _integer(ds, "Columns")
    samples = _integer(ds, "SamplesPerPixel", 1)
    bits_allocated = _integer(ds, "BitsAllocated")
    bits_stored = _integer(ds, "BitsStored", bits_allocated)
    frames = _integer(ds, "NumberOfFrames", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if rows < 1 or columns < 1 or frames < 1:
        raise DicomError("invalid_header", f"impossible image size {rows}x{columns}, {frames} frame(s)")
    if bits_allocated not in (1, 8, 16, 32, 64) or not 1 <= bits_stored <= bits_allocated:
        raise DicomError("invalid_header", f"bits allocated {bits_allocated} / stored {bits_stored}")
    if not photometric:
        raise DicomError("invalid_header", "the image has no Photometric Interpretation")
    if photometric not in _MONOCHROME | _COLOUR | {"PALETTE COLOR"}:
        raise DicomError(
            "unsupported_photometric",
            f"photometric interpretation {photometric} is not "
            "supported (grey, RGB, YBR and palette colour are)",
        )
    expected_samples = 3 if photometric in _COLOUR else 1
    if samples != expected_samples:
        raise DicomError("invalid_header", f"{photometric} with {samples} samples per pixel")
    if rows * columns * samples > MAX_FRAME_PIXELS:
        raise DicomError("too_large", f"a {rows}x{columns} frame is too large to decode")
    if max(rows, columns) > MAX_ASPECT * min(rows, columns):
        raise DicomError(
            "too_large",
            f"a {rows}x{columns} frame is too elongated to show: its long side may be at most "
            f"{MAX_ASPECT} times its short side",
        )
    return _Geometry(rows, columns, samples, bits_allocated, bits_stored, frames, photometric, syntax)


def _native_length(geometry: _Geometry) -> int:
    """Bytes the uncompressed pixel data must hold (PS3.5 8.1.1; YBR_FULL_422 keeps 2 of 3 samples)."""
    values = geometry.rows * geometry.columns * geometry.samples * geometry.frames
    if geometry.bits_allocated == 1:
        return (values + 7) // 8
    length = values * geometry.bits_allocated // 8
    return length // 3 * 2 if geometry.photometric == "YBR_FULL_422" else length


def _decoder(geometry: _Geometry) -> Decoder:
    try:
        decoder = get_decoder(geometry.syntax)
    except NotImplementedError as exc:
        raise DicomError("unsupported_transfer_syntax", f"no decoder for {geometry.syntax.name}") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise DicomError("unsupported_transfer_syntax", f"cannot decode {geometry.syntax.name}: {missing}")
    return decoder


# ---------------------------------------------------------------------------------------- decoding


def frame_indices(count: int, slices: int) -> list[int]:
    """The middle of ``count`` slices, or ``slices`` of them evenly spaced, first and last included."""
    if count < 1 or slices < 1:
        raise ValueError("count and slices must be positive")
    if slices == 1 or count == 1:
        return [count // 2]
    wanted = min(slices, count)
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _decode_frame(ds: Dataset, geometry: _Geometry, index: int) -> tuple[np.ndarray, str]:
    """One frame, and the colour space pydicom returned it in (it converts YBR_FULL/_422 to RGB, and the
    JPEG and JPEG 2000 codecs undo their own colour transforms)."""
    decoder = _decoder(geometry)
    try:
        array, info = decoder.as_array(ds, index=index, raw=False, **as_pixel_options(ds))
    except NotImplementedError as exc:
        raise DicomError(
            "unsupported_transfer_syntax", f"cannot decode {geometry.syntax.name}: {_first_line(exc)}"
        ) from exc
    except (AttributeError, KeyError, TypeError) as exc:
        raise DicomError(
            "invalid_header", f"the image attributes are inconsistent: {_first_line(exc)}"
        ) from exc
    except MemoryError as exc:
        raise DicomError("too_large", "the pixel data declares more than can be decoded") from exc
    except Exception as exc:  # codecs fail on damaged streams in their own ways
        # RuntimeError: every codec plugin refused the data; ValueError: pydicom's own checks.
        raise DicomError(
            "corrupt_pixel_data", f"the pixel data cannot be decoded: {_first_line(exc)}"
        ) from exc
    except BaseException as exc:
        if not _is_codec_panic(exc):
            raise
        raise DicomError(
            "corrupt_pixel_data", f"the pixel data cannot be decoded: {_first_line(exc)}"
        ) from exc
    return array, str(info.get("photometric_interpretation", geometry.photometric)).upper()


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """The attributes that map one frame's values: top level, then shared, then per-frame functional
    groups (enhanced multi-frame files keep rescale and window there)."""
    view = Dataset()
    for keyword in (
        "PhotometricInterpretation",
        "BitsStored",
        "PixelRepresentation",
        "Modality",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
    ):
        if keyword in ds:
            view[keyword] = ds[keyword]
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # LUT data in OW needs the byte order
    groups = []
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for keyword in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            if group.get(keyword):
                for element in group[keyword][0]:
                    view[element.tag] = element
    return view


def _modality_values(frame: np.ndarray, view: Dataset) -> np.ndarray:
    """Stored values to modality values (e.g. Hounsfield units) as float64."""
    if view.get("ModalityLUTSequence"):
        try:
            return apply_modality_lut(frame, view).astype(np.float64)
        except _LUT_ERRORS as exc:
            raise DicomError("invalid_header", f"the Modality LUT cannot be applied: {exc}") from exc
    slope = _number(view, "RescaleSlope", 1.0)
    intercept = _number(view, "RescaleIntercept", 0.0)
    values = frame.astype(np.float64)
    if slope != 1.0:
        values *= slope
    if intercept != 0.0:
        values += intercept
    return values


def _file_window(view: Dataset) -> tuple[float, float, str] | None:
    """The first window centre/width pair of the file (the primary one), if usable."""
    centres, widths = view.get("WindowCenter"), view.get("WindowWidth")
    if centres is None or widths is None or centres == "" or widths == "":
        return None
    centres = list(centres) if isinstance(centres, pydicom.multival.MultiValue) else [centres]
    widths = list(widths) if isinstance(widths, pydicom.multival.MultiValue) else [widths]
    try:
        centre, width = float(centres[0]), float(widths[0])
    except (IndexError, TypeError, ValueError):
        return None
    function = str(view.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"  # the standard's default; unknown functions are vendor noise
    if not (math.isfinite(centre) and math.isfinite(width)):
        return None
    # Degenerate widths: LINEAR needs at least 1 (C.11.2.1.2.1), the others more than 0.
    if width < 1.0 if function == "LINEAR" else width <= 0.0:
        return None
    return centre, width, function


def apply_window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 window to [0, 1]: LINEAR, LINEAR_EXACT or SIGMOID."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - centre) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        low, span = centre - width / 2.0, width
    else:  # LINEAR: the standard's half-pixel offsets
        low, span = centre - 0.5 - (width - 1.0) / 2.0, max(width - 1.0, 1e-12)
    return np.clip((values - low) / span, 0.0, 1.0)


def _robust_range(values: np.ndarray) -> tuple[float, float, WindowSource]:
    """The 0.5-99.5 percentile range, else min-max; estimated on at most ~1M samples."""
    flat = values.ravel()
    flat = flat[:: max(1, flat.size // 1_000_000)]
    low, high = (float(v) for v in np.percentile(flat, PERCENTILE_WINDOW))
    if high > low:
        return low, high, "percentile"
    low, high = float(values.min()), float(values.max())
    return low, high, "min_max" if high > low else "constant"


def _to_grey(
    frame: np.ndarray, view: Dataset, photometric: str
) -> tuple[np.ndarray, WindowSource, list[float] | None, tuple[float, float], str]:
    """Modality LUT, then VOI LUT / window / robust window, then MONOCHROME1 inversion → uint8."""
    values = _modality_values(frame, view)
    finite = np.isfinite(values)
    if not finite.all():  # float pixel data may hold NaN or infinities: show them as the lowest value
        values = np.where(finite, values, values[finite].min() if finite.any() else 0.0)
    value_range = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    varies = value_range[1] > value_range[0]
    scaled: np.ndarray | None = None
    source: WindowSource = "none"
    window: list[float] | None = None
    if view.get("VOILUTSequence"):
        try:
            lut = view.VOILUTSequence[0].LUTDescriptor
            first, entries = int(lut[1]), int(lut[0]) or 65536
            table = apply_voi(np.arange(first, first + entries, dtype=np.int64), view).astype(np.float64)
            # Clip first: pydicom indexes in the LUT's own dtype, where out-of-range inputs wrap around.
            inputs = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
            mapped = apply_voi(inputs, view).astype(np.float64)
            if table.max() > table.min():
                scaled, source = (mapped - table.min()) / (table.max() - table.min()), "voi_lut"
        except (*_LUT_ERRORS, NotImplementedError):
            scaled = None  # a broken VOI LUT falls back to the window or the robust range
    if scaled is None and (file_window := _file_window(view)) is not None:
        centre, width, function = file_window
        scaled, source, window = apply_window(values, centre, width, function), "window", [centre, width]
    if scaled is not None and varies and np.ptp(scaled) == 0:
        scaled = None  # the file's window misses the data entirely: degenerate, use the robust range
    if scaled is None:
        low, high, source = _robust_range(values)
        window = [(low + high) / 2.0, high - low] if high > low else None
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(values)
    out = np.rint(scaled * 255.0).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: the lowest value is white
    unit = str(view.get("RescaleType", "") or "")
    if not unit and str(view.get("Modality", "")) == "CT" and "RescaleIntercept" in view:
        unit = "HU"
    return out, source, window, value_range, unit


def _to_rgb(frame: np.ndarray, ds: Dataset, geometry: _Geometry, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        try:
            frame = apply_color_lut(frame, ds)[..., :3]  # drop a palette alpha channel
        except _LUT_ERRORS as exc:
            raise DicomError("invalid_header", f"the palette colour tables cannot be applied: {exc}") from exc
        # 16-bit palette entries; some writers put 8-bit values in them.
        depth = 16 if frame.dtype.itemsize > 1 and frame.max() > 255 else 8
    elif photometric in ("YBR_FULL", "YBR_FULL_422") and frame.dtype == np.uint8:
        # pydicom converts these itself; this only catches a codec that handed back raw YCbCr.
        frame, depth = convert_color_space(frame, "YBR_FULL", "RGB"), 8
    elif photometric == "RGB":
        depth = geometry.bits_stored
    else:
        raise DicomError("unsupported_photometric", f"pixel data left in {photometric} after decoding")
    if depth <= 8 and frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    scaled = frame.astype(np.float64) * (255.0 / (2.0**depth - 1.0))
    return np.ascontiguousarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


@dataclass
class _Rendered:
    image: Image.Image
    source: WindowSource = "none"
    window: list[float] | None = None
    value_range: tuple[float, float] | None = None
    unit: str = ""


def _render_frame(ds: Dataset, geometry: _Geometry, index: int) -> _Rendered:
    frame, photometric = _decode_frame(ds, geometry, index)
    if frame.ndim == 3 and geometry.samples == 1:  # a whole volume came back: keep the asked frame
        frame = frame[min(index, frame.shape[0] - 1)]
    if geometry.samples == 3 or photometric == "PALETTE COLOR":
        rgb = _to_rgb(frame, ds, geometry, photometric)
        value_range = (float(frame.min()), float(frame.max()))
        return _Rendered(Image.fromarray(rgb, "RGB"), value_range=value_range)
    with _header_errors():
        view = _frame_view(ds, index)
    grey, source, window, value_range, unit = _to_grey(frame, view, geometry.photometric)
    return _Rendered(Image.fromarray(np.ascontiguousarray(grey), "L"), source, window, value_range, unit)


def _pixel_spacing(ds: Dataset) -> list[float] | None:
    candidates = [ds.get("PixelSpacing")]
    if ds.get("SharedFunctionalGroupsSequence"):
        measures = ds.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        if measures:
            candidates.append(measures[0].get("PixelSpacing"))
    candidates.append(ds.get("ImagerPixelSpacing"))  # projection radiographs: at the detector
    for value in candidates:
        try:
            spacing = [float(v) for v in value] if value else []
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing):
            return spacing
    return None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _metadata(ds: Dataset, geometry: _Geometry, rendered: list[_Rendered]) -> DicomMetadata:
    ranges = [r.value_range for r in rendered if r.value_range is not None]
    thickness = ds.get("SliceThickness")
    try:
        thickness_mm = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness_mm = None
    middle = rendered[len(rendered) // 2]
    return DicomMetadata(
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        study_description=_text(ds, "StudyDescription"),
        sop_class=_sop_class_name(ds),
        photometric_interpretation=geometry.photometric,
        transfer_syntax=geometry.syntax.name,
        transfer_syntax_uid=str(geometry.syntax),
        rows=geometry.rows,
        columns=geometry.columns,
        samples_per_pixel=geometry.samples,
        bits_allocated=geometry.bits_allocated,
        bits_stored=geometry.bits_stored,
        frames=geometry.frames,
        pixel_spacing=_pixel_spacing(ds),
        slice_thickness=thickness_mm if thickness_mm is None or math.isfinite(thickness_mm) else None,
        value_unit=middle.unit,
        value_range=[min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None,
        window_source=middle.source,
        window=middle.window,
        burned_in_annotation=_text(ds, "BurnedInAnnotation").upper(),
    )


def render_dataset(ds: Dataset, *, slices: int = 1) -> DicomImage:
    """Pictures and metadata of an already parsed dataset: its middle frame, or ``slices`` evenly
    spaced frames. Only those frames are decoded."""
    if not 1 <= slices <= MAX_SLICES:
        raise ValueError(f"slices must be between 1 and {MAX_SLICES}")
    with _header_errors():
        geometry = _check_image(ds)
    pixels = next(ds[k] for k in _PIXEL_KEYWORDS if k in ds)
    if not geometry.syntax.is_encapsulated and pixels.value is not None:
        have, need = len(pixels.value), _native_length(geometry)
        if have < need:
            raise DicomError(
                "truncated",
                f"the pixel data holds {have} of the {need} bytes the header promises: the file is cut short",
            )
    chosen = frame_indices(geometry.frames, slices)
    with _header_errors():  # LUTs, palettes and windows are header values too
        rendered = [_render_frame(ds, geometry, index) for index in chosen]
        metadata = _metadata(ds, geometry, rendered)
    metadata.slice_count, metadata.selected_slices = geometry.frames, chosen
    return DicomImage(images=[r.image for r in rendered], metadata=metadata, dataset=ds, datasets=[ds])


def load_dicom(
    source: bytes | bytearray | memoryview | Path | str | BinaryIO,
    *,
    slices: int = 1,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> DicomImage:
    """The one entry point for a single DICOM file (an upload's bytes, a path or a binary stream).

    Returns the middle frame, or ``slices`` evenly spaced frames, as 8-bit images plus metadata; raises
    :class:`DicomError` with a specific ``reason`` otherwise. At most ``max_bytes`` are ever read.
    """
    return render_dataset(read_dataset(source, max_bytes), slices=slices)


# ------------------------------------------------------------------------------------------- series


def _label(source: object, position: int) -> str:
    return Path(source).name if isinstance(source, str | Path) else f"item {position + 1}"


def _vector(ds: Dataset, keyword: str, size: int) -> np.ndarray | None:
    value = ds.get(keyword)
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64) if value else None
    except (TypeError, ValueError):
        return None
    return vector if vector is not None and vector.shape == (size,) and np.isfinite(vector).all() else None


def slice_order(datasets: Sequence[Dataset]) -> list[int]:
    """Indices of ``datasets`` in slice order: Image Position (Patient) projected on the slice normal
    from Image Orientation (Patient); else Instance Number; else as given."""
    orientations = (_vector(ds, "ImageOrientationPatient", 6) for ds in datasets)
    orientation = next((o for o in orientations if o is not None), None)
    positions = [_vector(ds, "ImagePositionPatient", 3) for ds in datasets]
    if orientation is not None and all(p is not None for p in positions):
        normal = np.cross(orientation[:3], orientation[3:])
        if np.linalg.norm(normal) > 1e-6:
            keys = [float(np.dot(normal, p)) for p in positions]  # type: ignore[arg-type]
            if len(set(keys)) == len(keys) or len(datasets) == 1:
                return sorted(range(len(datasets)), key=keys.__getitem__)
    numbers: list[float] = []
    for ds in datasets:
        try:
            numbers.append(float(ds.get("InstanceNumber")))
        except (TypeError, ValueError):
            return list(range(len(datasets)))
    return sorted(range(len(datasets)), key=numbers.__getitem__)


def load_series(
    sources: Sequence[bytes | Path | str | Dataset],
    *,
    slices: int = 1,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> DicomImage:
    """Several files of one series (bytes, paths or parsed datasets) → the middle slice, or ``slices``
    evenly spaced ones, in anatomical order. One file behaves like :func:`load_dicom`."""
    if not sources:
        raise ValueError("a series needs at least one file")
    if not 1 <= slices <= MAX_SLICES:
        raise ValueError(f"slices must be between 1 and {MAX_SLICES}")
    datasets = []
    for position, source in enumerate(sources):
        try:
            ds = source if isinstance(source, Dataset) else read_dataset(source, max_bytes)
            with _header_errors():
                _check_image(ds)
        except DicomError as exc:
            raise DicomError(exc.reason, f"{_label(source, position)}: {exc}") from exc
        datasets.append(ds)
    if len(datasets) == 1:
        return render_dataset(datasets[0], slices=slices)
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets} - {""}
    if len(series) > 1:
        raise DicomError("mixed_series", f"the files belong to {len(series)} different series")
    ordered = [datasets[i] for i in slice_order(datasets)]
    chosen = frame_indices(len(ordered), slices)
    # Each chosen instance gives one picture (a multi-frame instance its middle frame).
    results = [render_dataset(ordered[index], slices=1) for index in chosen]
    middle = results[len(results) // 2]
    ranges = [r.metadata.value_range for r in results if r.metadata.value_range]
    metadata = middle.metadata.model_copy(
        update={
            "slice_count": len(ordered),
            "selected_slices": chosen,
            "value_range": [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None,
        }
    )
    return DicomImage(
        images=[r.images[0] for r in results], metadata=metadata, dataset=middle.dataset, datasets=ordered
    )


# ------------------------------------------------------------------------------------------- corpus


def outcome(path: Path | str, *, slices: int = 1, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """``"decoded"`` or the :class:`DicomError` reason for one file."""
    try:
        load_dicom(Path(path), slices=slices, max_bytes=max_bytes)
    except DicomError as exc:
        return exc.reason
    return "decoded"


def corpus_report(paths: Iterable[Path | str], *, slices: int = 1) -> dict[str, int]:
    """How many of ``paths`` decode, and how many fail for each reason."""
    return dict(Counter(outcome(path, slices=slices) for path in paths).most_common())
