"""Image quality checks on synthetic images: each defect raises its own flag, a clean phantom passes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tools.qc import QCThresholds, check_image, measure, noise_sigma, to_gray


def phantom(size: int = 256) -> np.ndarray:
    """A CT-like test object: nested ellipses, small discs and thin lines on a dark background."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size * 2 - 1
    image = np.full((size, size), 30.0, dtype=np.float32)

    def ellipse(cx: float, cy: float, a: float, b: float, value: float) -> None:
        image[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1] = value

    ellipse(0, 0, 0.8, 0.9, 110)
    ellipse(-0.3, 0, 0.2, 0.35, 160)
    ellipse(0.3, 0, 0.2, 0.35, 70)
    ellipse(0, -0.5, 0.15, 0.1, 200)
    for i in range(6):
        ellipse(-0.5 + i * 0.2, 0.55, 0.03 + 0.01 * i, 0.03 + 0.01 * i, 190)
    for i in range(8):
        image[int(size * 0.3) : int(size * 0.45), int(size * (0.35 + 0.03 * i))] = 220
    return image.astype(np.uint8)


def blurred(image: np.ndarray, radius: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def with_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_clean_phantom_passes() -> None:
    report = check_image(phantom())
    assert report.ok and report.flags == [], report.flags
    assert report.metrics["width"] == report.metrics["height"] == 256
    assert report.metrics["noise_sigma"] < 1 and report.metrics["sharpness"] > 0.1


@pytest.mark.parametrize("radius", [2, 3, 5])
def test_blur_is_flagged(radius: float) -> None:
    report = check_image(blurred(phantom(), radius))
    assert report.codes() == {"blurry"}, report.flags
    flag = report.flags[0]
    assert flag.value < flag.threshold == QCThresholds().min_sharpness


@pytest.mark.parametrize("sigma", [20, 30])
def test_noise_is_flagged_and_measured(sigma: float) -> None:
    image = with_noise(phantom(), sigma)
    report = check_image(image)
    assert "noisy" in report.codes() and "blurry" not in report.codes(), report.flags
    assert noise_sigma(to_gray(image)) == pytest.approx(sigma, rel=0.15)


def test_light_noise_passes() -> None:
    assert check_image(with_noise(phantom(), 3)).ok


def test_saturation_and_clipped_highlights() -> None:
    # A window far too narrow: nearly everything ends up pure black or pure white.
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.float32), (256, 1)) + phantom() * 0.2
    stretched = np.clip((ramp - 120) * 16, 0, 255).astype(np.uint8)
    report = check_image(stretched)
    assert "saturated" in report.codes() and report.metrics["saturated"] > 0.8
    overexposed = np.clip(phantom().astype(np.float32) * 2.5, 0, 255).astype(np.uint8)
    assert "clipped_highlights" in check_image(overexposed).codes()


def test_bad_window_and_low_contrast() -> None:
    dark = (phantom() * 0.1).astype(np.uint8)
    assert {"bad_window", "low_contrast"} <= check_image(dark).codes()
    flat = np.full((128, 128), 128, dtype=np.uint8)
    codes = check_image(flat).codes()
    assert {"low_contrast", "narrow_range"} <= codes and "blurry" not in codes


def test_size_checks() -> None:
    tiny = np.asarray(Image.fromarray(phantom()).resize((40, 40)))
    assert "too_small" in check_image(tiny).codes()
    strip = np.tile(phantom()[100:164, :], (1, 6))  # 64 x 1536
    report = check_image(strip)
    assert "extreme_aspect" in report.codes() and report.metrics["aspect"] == 24.0


def test_large_images_are_judged_at_working_scale() -> None:
    big = np.asarray(Image.fromarray(phantom()).resize((1024, 1024), Image.Resampling.NEAREST))
    assert check_image(big).ok
    assert "blurry" in check_image(blurred(big, 8)).codes()


def test_rgb_and_pil_inputs() -> None:
    gray = phantom()
    rgb = np.stack([gray, gray, gray], axis=-1)
    assert measure(rgb) == measure(gray)
    assert measure(Image.fromarray(rgb)) == measure(gray)
    rgba = np.concatenate([rgb, np.full((*gray.shape, 1), 255, np.uint8)], axis=-1)
    assert measure(rgba) == measure(gray)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((64, 64), dtype=np.float32), np.zeros((64, 64, 2), dtype=np.uint8), np.zeros((0, 5), np.uint8)],
)
def test_rejects_what_it_cannot_read(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        check_image(bad)
    with pytest.raises(ValueError, match="8-bit"):
        check_image(Image.new("I;16", (64, 64)))


def test_thresholds_can_be_tightened() -> None:
    image = with_noise(phantom(), 8)
    assert check_image(image).ok
    assert "noisy" in check_image(image, QCThresholds(max_noise_sigma=5)).codes()
