"""Validating uploaded images before anything else touches them."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Formats a browser or a PACS export plausibly sends as a plain picture (DICOM is handled separately).
# MPO is a JPEG with extra frames after the first (phone cameras write it): the first is the photo.
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF"}
MAX_PIXELS = 64 * 1024 * 1024  # far above any study frame; stops decompression bombs
# Longest side over shortest. A 1x65535 strip shows nothing, and the model's resize of the short side
# to its input size (336 px) would stretch the long side to millions of pixels: gigabytes in the replica.
MAX_ASPECT = 32
# The largest side the model is handed (it sees 336 px): a 64-megapixel upload costs it gigabytes else.
MODEL_MAX_SIDE = 2048


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10: a 128-byte preamble, then the magic ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


class UnsupportedImage(ValueError):
    """The bytes are not an image this system accepts; the message says why, for the user."""


def decode_image(data: bytes) -> Image.Image:
    """Decode and fully load ``data`` as an RGB image for the model, or raise :class:`UnsupportedImage`;
    a side beyond :data:`MODEL_MAX_SIDE` is shrunk to it (aspect kept)."""
    image = _decode(data, upright=False)
    if max(image.size) > MODEL_MAX_SIDE:
        image.thumbnail((MODEL_MAX_SIDE, MODEL_MAX_SIDE), Image.Resampling.BICUBIC)
    return image


def decode_upright(data: bytes) -> Image.Image:
    """Like :func:`decode_image`, but turned as the EXIF orientation says, colours moved to sRGB when
    an ICC profile is embedded, and carrying no metadata at all: pixels only."""
    image = _decode(data, upright=True)
    # A fresh image from the raw pixels: no EXIF, XMP, ICC, comments or text chunks come along.
    return Image.frombytes("RGB", image.size, image.tobytes())


def strip_metadata(data: bytes) -> bytes:
    """Re-encode an uploaded picture as a PNG of its pixels only (see :func:`decode_upright`).

    EXIF (GPS, camera, dates), XMP, ICC profiles, JPEG comments and PNG text chunks can all name a
    patient or a place; none of them survives.
    """
    buffer = io.BytesIO()
    decode_upright(data).save(buffer, format="PNG")
    return buffer.getvalue()


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a picture whose EXIF cannot be read is kept as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - hostile EXIF fails in many ways; the pixels are still good
        return image


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert from an embedded ICC profile to sRGB, so dropping the profile keeps the colours."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA", "L", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # noqa: BLE001 - a broken profile: keep the stored values
        return image


def _decode(data: bytes, *, upright: bool) -> Image.Image:
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
                if max(width, height) > MAX_ASPECT * min(width, height):
                    raise UnsupportedImage(
                        f"image of {width}x{height} pixels is too elongated: its long side may be at most "
                        f"{MAX_ASPECT} times its short side"
                    )
                probe.load()
                if not upright:
                    return probe.convert("RGB")
                return _to_srgb(_upright(probe)).convert("RGB")
    except UnsupportedImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UnsupportedImage(
            "the file is not a readable image (PNG, JPEG, BMP, TIFF, WebP or GIF)"
        ) from exc
    except MemoryError as exc:
        raise UnsupportedImage("the image needs more memory to decode than is allowed") from exc
    except Exception as exc:  # damaged data fails inside PIL's plugins in many ways
        # (OSError and SyntaxError for truncation, but also TypeError, struct.error, IndexError, …)
        raise UnsupportedImage(f"the image is damaged and cannot be decoded: {_first_line(exc)}") from exc


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
