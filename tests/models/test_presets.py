"""The presets for the released models carry the official hyperparameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.healthgpt import HealthGPT
from models.spec import ModelSpec

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "models"
OFFICIAL = {  # preset -> plugin -> (r, alpha, experts, CLIP layer, weight file names)
    "m3": {
        "comprehension": (64, 128, 4, -2, ["com_hlora_weights.bin"]),
        "generation": (256, 512, 4, 1, ["gen_hlora_weights.bin", "fusion_layer_weights.bin"]),
    },
    "l14": {"comprehension": (32, 64, 4, -2, ["com_hlora_weights_phi4.bin"])},
    "xl32": {"comprehension": (32, 64, 4, -2, ["com_hlora_weights_QWEN_32B.bin"])},
}
TEMPLATES = {"m3": "phi3_instruct", "l14": "phi4_instruct", "xl32": "qwen_2"}


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_preset_hyperparameters(preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHGPT_WEIGHTS", str(tmp_path))
    spec = ModelSpec.from_yaml(PRESETS / f"{preset}.yaml")
    assert spec.dtype == "float16" and spec.template == TEMPLATES[preset]
    assert spec.backbone.is_relative_to(tmp_path)
    for plugin, (r, alpha, experts, layer, files) in OFFICIAL[preset].items():
        got = spec.plugins[plugin]
        assert (got.r, got.alpha, got.experts, got.vision_layer) == (r, alpha, experts, layer)
        assert [w.name for w in got.weights] == files
    assert set(spec.plugins) == set(OFFICIAL[preset])


def test_unset_weights_folder_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEALTHGPT_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="HEALTHGPT_WEIGHTS"):
        ModelSpec.from_yaml(PRESETS / "m3.yaml")


def test_missing_released_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHGPT_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Phi-3-mini-4k-instruct"):
        HealthGPT(ModelSpec.from_yaml(PRESETS / "m3.yaml"))
