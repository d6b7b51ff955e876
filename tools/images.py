"""Validating uploaded images before anything else touches them."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

# Formats a browser or a PACS export plausibly sends as a plain picture (DICOM is handled separately).
ACCEPTED_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"}
MAX_PIXELS = 64 * 1024 * 1024  # far above any study frame; stops decompression bombs


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10: a 128-byte preamble, then the magic ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


class UnsupportedImage(ValueError):
    """The bytes are not an image this system accepts; the message says why, for the user."""


def decode_image(data: bytes) -> Image.Image:
    """Decode and fully load ``data`` as an RGB image, or raise :class:`UnsupportedImage`."""
    if not data:
        raise UnsupportedImage("the image file is empty")
    if is_dicom(data):
        # Some DICOM preambles are valid TIFF headers; never let a study slip past de-identification.
        raise UnsupportedImage("DICOM files are not accepted as plain images; use the DICOM upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                image_format = probe.format
                width, height = probe.size
                if image_format not in ACCEPTED_FORMATS:
                    raise UnsupportedImage(
                        f"image format {image_format} is not accepted; send one of "
                        f"{', '.join(sorted(ACCEPTED_FORMATS))}"
                    )
                if width * height > MAX_PIXELS:
                    raise UnsupportedImage(f"image of {width}x{height} pixels is too large")
                probe.load()
                return probe.convert("RGB")
    except UnsupportedImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UnsupportedImage(
            "the file is not a readable image (PNG, JPEG, BMP, TIFF, WebP or GIF)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt image data
        raise UnsupportedImage(f"the image is damaged and cannot be decoded: {exc}") from exc
