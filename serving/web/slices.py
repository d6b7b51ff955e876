"""Slices of a stored study as PNG pictures, with the window the physician asked for.

A study's slices are the instances of its series (``series_keys``, one de-identified file each, in
anatomical order: a series imported from the PACS or uploaded as several files), or else the frames of
its one DICOM object (``dicom_key``). Slice numbers are those a read cites (``slices_read``). Each file
is decoded once into modality values (e.g. Hounsfield units) and kept in a cache bounded by bytes, so
scrolling and changing the window only re-map numbers. Presets are the usual CT windows; "default" is the
file's own window (for a series, the middle instance's, so brightness holds while scrolling), else a
robust range of its values.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.pixels import apply_modality_lut

from serving.problems import Problem
from tools.dicom_io import DicomError, apply_window, load_dicom, read_dataset

# (centre, width); None: the file's own window.
PRESETS: dict[str, tuple[float, float] | None] = {
    "default": None,
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (300.0, 1500.0),
    "brain": (40.0, 80.0),
}
# Decoded files kept for scrolling: a 512×512 CT slice is 1 MiB of float32, so a few hundred slices.
_CACHE_BYTES = 256 * 1024 * 1024
Fetch = Callable[[str], bytes]  # a pixel-store key → the file's bytes


@dataclass(frozen=True)
class Volume:
    values: np.ndarray  # (frames, rows, cols) modality values, or (frames, rows, cols, 3) colour
    colour: bool
    invert: bool  # MONOCHROME1: high values are dark
    window: tuple[float, float]  # the file's, else a robust range

    @property
    def frames(self) -> int:
        return int(self.values.shape[0])


_cache: OrderedDict[str, Volume] = OrderedDict()
_lock = threading.Lock()


def volume(key: str, fetch: Fetch) -> Volume:
    """The decoded file under ``key`` (``fetch(key)`` gives its DICOM bytes on a miss)."""
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    decoded = decode(fetch(key))
    with _lock:
        _cache[key] = decoded
        # The least recently shown go first; the one just decoded always stays.
        while len(_cache) > 1 and sum(v.values.nbytes for v in _cache.values()) > _CACHE_BYTES:
            _cache.popitem(last=False)
    return decoded


@dataclass(frozen=True)
class Slices:
    """Where a study's slices lie: one file per slice (a series), or the frames of one file."""

    keys: tuple[str, ...]

    @property
    def series(self) -> bool:
        return len(self.keys) > 1

    def count(self, fetch: Fetch) -> int:
        return len(self.keys) if self.series else volume(self.keys[0], fetch).frames

    def middle(self, fetch: Fetch) -> Volume:
        """The file whose window is the study's "default" one (a series: its middle instance)."""
        return volume(self.keys[len(self.keys) // 2], fetch)

    def locate(self, number: int, fetch: Fetch) -> tuple[Volume, int]:
        """Slice ``number`` (from 1) as (decoded file, frame index)."""
        if not self.series:
            return volume(self.keys[0], fetch), number - 1
        if not 1 <= number <= len(self.keys):
            raise Problem(404, f"no slice {number} (the study has {len(self.keys)})")
        instance = volume(self.keys[number - 1], fetch)
        return instance, instance.frames // 2  # an instance is one slice: its middle frame if several


def slices_of(metadata: dict[str, Any] | None) -> Slices | None:
    """The slices of a study from its de-identified metadata; None when it holds no DICOM."""
    metadata = metadata or {}
    keys = [k for k in metadata.get("series_keys") or [] if isinstance(k, str)]
    if len(keys) > 1:
        return Slices(tuple(keys))
    key = metadata.get("dicom_key")
    return Slices((key,)) if isinstance(key, str) and key else None


def render_slice(study: Slices, number: int, window: tuple[float, float] | None, fetch: Fetch) -> bytes:
    """Slice ``number`` (from 1) as a PNG; a series without an asked window takes its middle's."""
    decoded, frame = study.locate(number, fetch)
    if window is None and study.series and not decoded.colour:
        window = study.middle(fetch).window
    return render(decoded, frame, window)


def decode(data: bytes) -> Volume:
    try:
        ds = read_dataset(data, max_bytes=len(data) + 1)
        pixels = ds.pixel_array
    except DicomError as exc:
        raise Problem(415, str(exc)) from exc
    except Exception as exc:  # a codec's own failure: the study cannot be shown
        raise Problem(422, f"the study's pixels cannot be decoded: {str(exc)[:200]}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
    if colour:
        values = pixels.reshape((frames, *pixels.shape[-3:])) if frames > 1 else pixels[None]
        return Volume(values.astype(np.uint8, copy=False), True, False, (127.5, 255.0))
    values = apply_modality_lut(pixels, ds).astype(np.float32)
    values = values.reshape((frames, *values.shape[-2:])) if frames > 1 else values[None]
    return Volume(values, False, photometric == "MONOCHROME1", _file_window(ds, values))


def _file_window(ds, values: np.ndarray) -> tuple[float, float]:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        centre = float(centre[0] if hasattr(centre, "__len__") and not isinstance(centre, str) else centre)
        width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
        if width >= 1:
            return centre, width
    except (TypeError, ValueError, IndexError):
        pass
    low, high = np.percentile(values, [0.5, 99.5])
    return float((low + high) / 2), float(max(high - low, 1.0))


def render(vol: Volume, index: int, window: tuple[float, float] | None) -> bytes:
    """One slice as a PNG, through ``window`` (centre, width), else the file's own."""
    if not 0 <= index < vol.frames:
        raise Problem(404, f"no slice {index + 1} (the study has {vol.frames})")
    frame = vol.values[index]
    if vol.colour:
        picture = Image.fromarray(frame, "RGB")
    else:
        centre, width = window or vol.window
        grey = apply_window(frame.astype(np.float64), centre, max(width, 1.0))
        if vol.invert:
            grey = 1.0 - grey
        picture = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), "L")
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=False)
    return out.getvalue()


def parse_window(preset: str | None, centre: float | None, width: float | None) -> tuple[float, float] | None:
    """An explicit centre/width (dragging), else a named preset, else the file's own window."""
    if centre is not None and width is not None:
        if not (np.isfinite(centre) and np.isfinite(width)) or width < 1 or abs(centre) > 1e6 or width > 1e6:
            raise Problem(422, "window: centre within ±1e6 and width from 1 to 1e6")
        return float(centre), float(width)
    if preset is None:
        return None
    if preset not in PRESETS:
        raise Problem(422, f"preset: one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def preview_png(data: bytes, limit: int) -> bytes:
    """A file a user is about to send, as a picture: a DICOM file's middle slice with its own window."""
    try:
        image = load_dicom(data, max_bytes=limit).images[0]
    except DicomError as exc:
        raise Problem(415, str(exc)) from exc
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
