"""Upload validation: real image bytes in, clear errors for everything else."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tools.images import UnsupportedImage, decode_image


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "L"), ("TIFF", "I;16")])
def test_accepts_common_images_as_rgb(fmt: str, mode: str) -> None:
    image = decode_image(_encoded(fmt, mode))
    assert image.mode == "RGB" and image.size == (20, 10)


def test_rejects_text() -> None:
    with pytest.raises(UnsupportedImage, match="not a readable image"):
        decode_image(b"Patient: John Doe\nthis is not an image\n")


def test_rejects_empty() -> None:
    with pytest.raises(UnsupportedImage, match="empty"):
        decode_image(b"")


def test_rejects_truncated_png() -> None:
    data = _encoded("PNG", size=(64, 64))
    with pytest.raises(UnsupportedImage):
        decode_image(data[: len(data) // 2])


def test_rejects_formats_outside_the_list() -> None:
    with pytest.raises(UnsupportedImage, match="ICO is not accepted"):
        decode_image(_encoded("ICO", size=(16, 16)))


def test_rejects_dicom_as_a_plain_image() -> None:
    """DICOM has its own ingest path (de-identification first); it is never decoded as a picture."""
    import pydicom.data

    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG-lossy.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        path = Path(pydicom.data.get_testdata_file(name))
        with pytest.raises(UnsupportedImage, match="DICOM"):
            decode_image(path.read_bytes())
