"""Saving a plugin in our adapter format and loading it back gives the same model outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from models.adapters import adapter_plugin_spec, save_adapter
from models.healthgpt import HealthGPT
from models.spec import ModelSpec


def test_round_trip_keeps_outputs(official_tiny: Path, tmp_path: Path) -> None:
    spec = ModelSpec.from_yaml(official_tiny / "healthgpt.yaml")
    model = HealthGPT(spec)
    image = Image.open(official_tiny / "image.png")
    for plugin in ("comprehension", "generation"):
        save_adapter(model, plugin, tmp_path / plugin, version=f"{plugin}-v1")
    with pytest.raises(FileExistsError):
        save_adapter(model, "comprehension", tmp_path / "comprehension", version="again")

    plugins = {}
    for plugin in ("comprehension", "generation"):
        plugins[plugin], metadata = adapter_plugin_spec(tmp_path / plugin)
        assert metadata["version"] == f"{plugin}-v1" and metadata["base_model"] == "official-tiny"
    reloaded = HealthGPT(spec.model_copy(update={"plugins": plugins}))
    assert set(reloaded.overrides) == {"generation"}  # the fusion tables travel with their plugin
    for plugin in ("comprehension", "generation"):
        ours, _, _ = model.teacher_forced_logits("Describe.", "A finding.", image, plugin)
        theirs, _, _ = reloaded.teacher_forced_logits("Describe.", "A finding.", image, plugin)
        assert torch.equal(ours, theirs)


def test_not_an_adapter_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"adapter\.json"):
        adapter_plugin_spec(tmp_path)
