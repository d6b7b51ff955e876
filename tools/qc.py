"""Image quality checks before an image is sent to the model: is it big, sharp, clean and exposed
well enough to be read at all?

Works on 8-bit grayscale or colour pixels (a numpy ``uint8`` array or a PIL image; colour is reduced
to luma). Every measure is plain numpy:

- **size**: the shorter side, and the aspect ratio;
- **contrast**: standard deviation, and the 1st-99th percentile range;
- **noise**: sigma from the median absolute response to a Laplacian-difference kernel that cancels
  flat areas and gradients (robust to edges, which are few; after Immerkaer 1996);
- **blur**: variance of the Laplacian, less the part noise explains, over the image variance, measured
  at a fixed working scale so the size of the upload does not matter;
- **saturation**: share of pixels at 0 or 255, and at 255 alone (clipped highlights);
- **window**: nearly everything in the darkest or brightest eighth means a bad window or exposure.

Thresholds are deliberately loose (a clean CT, X-ray or photo passes); they catch images that are
unusable, not merely imperfect. They are fields of :class:`QCThresholds`, so a caller can tighten them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

WORKING_SIDE = 512  # blur and noise are judged with the longer side scaled down to this
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's convert("L")


class QCFlag(BaseModel):
    code: str
    message: str
    value: float
    threshold: float


class QCReport(BaseModel):
    ok: bool
    flags: list[QCFlag] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)

    def codes(self) -> set[str]:
        return {flag.code for flag in self.flags}


class QCThresholds(BaseModel):
    model_config = ConfigDict(frozen=True)

    min_side: int = 64
    max_aspect: float = 4.0
    min_std: float = 10.0
    min_dynamic_range: float = 40.0
    max_noise_sigma: float = 12.0
    min_sharpness: float = 0.005
    max_saturated: float = 0.6
    max_clipped_high: float = 0.15
    max_one_end: float = 0.92


def to_gray(image: np.ndarray | Image.Image) -> np.ndarray:
    """8-bit grayscale or RGB(A) pixels as a float32 ``(height, width)`` luma array in 0..255."""
    if isinstance(image, Image.Image):
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            raise ValueError(f"expected an 8-bit image, got PIL mode {image.mode}")
        image = np.asarray(image.convert("L" if image.mode in ("1", "L", "LA") else "RGB"))
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] in (1, 3, 4):
        pixels = pixels[..., 0] if pixels.shape[2] == 1 else pixels[..., :3].astype(np.float32) @ _LUMA
    if pixels.ndim != 2 or 0 in pixels.shape:
        raise ValueError(
            f"expected a (height, width) or (height, width, 3|4) image, got shape {pixels.shape}"
        )
    return pixels.astype(np.float32)


def _working_scale(gray: np.ndarray) -> np.ndarray:
    longest = max(gray.shape)
    if longest <= WORKING_SIDE:
        return gray
    height, width = (max(1, round(n * WORKING_SIDE / longest)) for n in gray.shape)
    # Area averaging, on floats: no rounding back to 8 bits.
    return np.asarray(Image.fromarray(gray, mode="F").resize((width, height), Image.Resampling.BOX))


def noise_sigma(gray: np.ndarray) -> float:
    """Robust noise estimate: the kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] is zero on planes, and the
    median ignores the minority of pixels on edges; its L2 norm is 6."""
    g = gray
    response = (
        g[:-2, :-2] - 2 * g[:-2, 1:-1] + g[:-2, 2:]
        - 2 * g[1:-1, :-2] + 4 * g[1:-1, 1:-1] - 2 * g[1:-1, 2:]
        + g[2:, :-2] - 2 * g[2:, 1:-1] + g[2:, 2:]
    )  # fmt: skip
    mad = np.median(np.abs(response - np.median(response)))
    return float(1.4826 * mad / 6.0)


def laplacian_variance(gray: np.ndarray) -> float:
    g = gray
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(laplacian.var())


def measure(image: np.ndarray | Image.Image) -> dict[str, float]:
    """Every metric the checks use."""
    gray = to_gray(image)
    height, width = gray.shape
    p1, p99 = np.percentile(gray, [1, 99])
    metrics = {
        "width": float(width),
        "height": float(height),
        "aspect": max(width, height) / min(width, height),
        "mean": float(gray.mean()),
        "std": float(gray.std()),
        "dynamic_range": float(p99 - p1),
        "saturated": float(np.mean((gray <= 0.5) | (gray >= 254.5))),
        "clipped_high": float(np.mean(gray >= 254.5)),
        "dark": float(np.mean(gray < 32)),
        "bright": float(np.mean(gray > 223)),
    }
    work = _working_scale(gray)
    if min(work.shape) >= 8:
        sigma = noise_sigma(work)
        variance = float(work.var())
        # The 4-neighbour Laplacian turns noise of sigma into variance 20 sigma^2: take that away.
        detail = max(laplacian_variance(work) - 20.0 * sigma**2, 0.0)
        metrics["noise_sigma"] = sigma
        metrics["sharpness"] = detail / variance if variance > 1e-6 else 0.0
    return {key: round(value, 4) for key, value in metrics.items()}


def check_image(image: np.ndarray | Image.Image, thresholds: QCThresholds | None = None) -> QCReport:
    """Measure ``image`` and flag what makes it unfit to read."""
    t = thresholds or QCThresholds()
    m = measure(image)
    flags: list[QCFlag] = []

    def flag(code: str, message: str, value: float, threshold: float) -> None:
        flags.append(QCFlag(code=code, message=message, value=value, threshold=threshold))

    side = min(m["width"], m["height"])
    if side < t.min_side:
        flag(
            "too_small", f"shorter side is {side:.0f} px; at least {t.min_side} are needed", side, t.min_side
        )
    if m["aspect"] > t.max_aspect:
        flag("extreme_aspect", f"aspect ratio {m['aspect']:.1f}:1 is extreme", m["aspect"], t.max_aspect)
    if m["std"] < t.min_std:
        flag("low_contrast", f"contrast is very low (std {m['std']:.1f})", m["std"], t.min_std)
    if m["dynamic_range"] < t.min_dynamic_range:
        flag(
            "narrow_range",
            f"most pixels span only {m['dynamic_range']:.0f} grey levels",
            m["dynamic_range"],
            t.min_dynamic_range,
        )
    if "noise_sigma" in m and m["noise_sigma"] > t.max_noise_sigma:
        flag(
            "noisy",
            f"noise sigma is about {m['noise_sigma']:.1f} grey levels",
            m["noise_sigma"],
            t.max_noise_sigma,
        )
    # A flat image has no detail to lose: low contrast already says what is wrong with it.
    if "sharpness" in m and m["std"] >= t.min_std and m["sharpness"] < t.min_sharpness:
        flag(
            "blurry", f"little fine detail (sharpness {m['sharpness']:.3f})", m["sharpness"], t.min_sharpness
        )
    if m["saturated"] > t.max_saturated:
        flag(
            "saturated",
            f"{m['saturated']:.0%} of pixels are pure black or white",
            m["saturated"],
            t.max_saturated,
        )
    if m["clipped_high"] > t.max_clipped_high:
        flag(
            "clipped_highlights",
            f"{m['clipped_high']:.0%} of pixels are clipped at white",
            m["clipped_high"],
            t.max_clipped_high,
        )
    for name, where in (("dark", "darkest"), ("bright", "brightest")):
        if m[name] > t.max_one_end:
            flag(
                "bad_window",
                f"{m[name]:.0%} of pixels sit in the {where} eighth: window or exposure is off",
                m[name],
                t.max_one_end,
            )
    return QCReport(ok=not flags, flags=flags, metrics=m)
