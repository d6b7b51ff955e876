"""DICOM ingest: a file or upload becomes 8-bit pictures for the model and plain metadata.

The pixel pipeline runs in the standard order: the modality LUT (rescale slope/intercept, e.g. to
Hounsfield units), then the VOI LUT or window centre/width (a robust percentile window where the file
has none, or a degenerate one), then MONOCHROME1 inversion; colour images (RGB, YBR, palette) come out
as RGB. Multi-frame images give the middle frame, or N evenly spaced frames.
Failures are :class:`DicomError` with a short ``reason`` code and a message a user can act on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class DicomError(ValueError):
    """``reason``: not_dicom | no_pixel_data | unsupported_transfer_syntax | truncated |
    corrupt_pixel_data | unsupported_photometric | too_large."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DicomMetadata(BaseModel):
    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    photometric_interpretation: str = ""
    transfer_syntax: str = ""
    rows: int = 0
    columns: int = 0
    frames: int = 1
    slice_count: int = 1
    bits_stored: int | None = None
    pixel_spacing: list[float] | None = None
    window: list[float] | None = Field(default=None, description="[centre, width] applied, if any")


@dataclass
class DicomImage:
    images: list[Image.Image]
    metadata: DicomMetadata
    dataset: Dataset


def read_dataset(source: bytes | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> Dataset:
    if isinstance(source, bytes | bytearray):
        if len(source) > max_bytes:
            raise DicomError("too_large", f"the file is larger than {max_bytes} bytes")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
    try:
        return pydicom.dcmread(stream)
    except InvalidDicomError as exc:
        raise DicomError("not_dicom", "not a DICOM file (no DICM preamble)") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomError("truncated", f"the DICOM file is truncated or damaged: {exc}") from exc


def _int(ds: Dataset, name: str, default: int = 0) -> int:
    """A numeric header value, or ``default`` when it is absent or malformed (vendors do that)."""
    try:
        value = ds.get(name)
        return int(value) if value not in (None, "") else default
    except (ValueError, TypeError):
        return default


def _frame_indices(frames: int, slices: int) -> list[int]:
    if slices <= 1 or frames <= 1:
        return [frames // 2]
    count = min(slices, frames)
    return sorted({round(i * (frames - 1) / (count - 1)) for i in range(count)})


def _window_to_uint8(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[float] | None]:
    """Modality LUT, then VOI (file's own, else a 0.5-99.5 percentile window), then 8 bits."""
    values = apply_modality_lut(values, ds)
    window = None
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        try:
            voi = apply_voi_lut(values, ds, index=0)
            if np.ptp(voi) > 0:
                values = voi
                if "WindowCenter" in ds:
                    centre, width = ds.WindowCenter, ds.WindowWidth
                    centre = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
                    width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
                    window = [centre, width]
        except (ValueError, TypeError, AttributeError, IndexError):
            pass  # a broken VOI falls back to the robust window below
    values = values.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5]) if window is None else (values.min(), values.max())
    if high <= low:
        low, high = float(values.min()), float(values.max())
    scaled = np.zeros_like(values) if high <= low else (np.clip(values, low, high) - low) / (high - low)
    out = (scaled * 255.0 + 0.5).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out  # MONOCHROME1: low values are white
    return out, window


def _to_image(frame: np.ndarray, ds: Dataset) -> tuple[Image.Image, list[float] | None]:
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if samples == 1 and photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        frame = apply_color_lut(frame, ds)
        samples = 3
    if samples == 3:
        # pydicom converts YBR to RGB on decode; rescale to 8 bits when stored deeper.
        frame = frame.astype(np.float64)
        peak = frame.max() or 1.0
        if peak > 255:
            frame = frame / peak * 255.0
        return Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), "RGB"), None
    if samples != 1:
        raise DicomError("unsupported_photometric", f"{samples} samples per pixel are not supported")
    out, window = _window_to_uint8(frame, ds)
    return Image.fromarray(out, "L"), window


def load_dicom(source: bytes | Path, *, slices: int = 1, max_bytes: int = MAX_UPLOAD_BYTES) -> DicomImage:
    """Pictures (the middle frame, or ``slices`` evenly spaced frames) and metadata of one DICOM file."""
    ds = read_dataset(source, max_bytes)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError("no_pixel_data", "the DICOM file holds no image (no pixel data)")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    frames = max(1, _int(ds, "NumberOfFrames", 1))
    images, window = [], None
    for index in _frame_indices(frames, slices):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = pixel_array(ds, index=index if frames > 1 else None, raw=False)
        except NotImplementedError as exc:
            name = getattr(syntax, "name", str(syntax))
            raise DicomError("unsupported_transfer_syntax", f"cannot decode transfer syntax {name}") from exc
        except (ValueError, RuntimeError, EOFError, TypeError, KeyError, AttributeError) as exc:
            raise DicomError("corrupt_pixel_data", f"the pixel data cannot be decoded: {exc}") from exc
        if frame.ndim == 3 and _int(ds, "SamplesPerPixel", 1) == 1:
            frame = frame[frame.shape[0] // 2]
        image, window = _to_image(frame, ds)
        images.append(image)
    spacing = ds.get("PixelSpacing")
    metadata = DicomMetadata(
        modality=str(ds.get("Modality", "")),
        body_part=str(ds.get("BodyPartExamined", "")),
        study_description=str(ds.get("StudyDescription", "")),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "")),
        transfer_syntax=getattr(syntax, "name", str(syntax or "")),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=frames,
        slice_count=len(images),
        bits_stored=_int(ds, "BitsStored") or None,
        pixel_spacing=[float(v) for v in spacing] if spacing else None,
        window=window,
    )
    return DicomImage(images=images, metadata=metadata, dataset=ds)
