"""The YAML description of one HealthGPT model: backbone, vision tower, template and its plugins."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, model_validator

Template = Literal["phi3_instruct", "phi4_instruct", "qwen_2"]
DType = Literal["float32", "float16", "bfloat16"]


class PluginSpec(BaseModel):
    """One H-LoRA plugin: its task, weight files (loaded in order), rank, alpha, experts, CLIP layer."""

    task: Literal["comprehension", "generation"]
    weights: list[Path] = Field(default_factory=list)
    r: int = Field(gt=0)
    alpha: int = Field(gt=0)
    experts: int = Field(default=4, gt=0)
    vision_layer: int

    @model_validator(mode="after")
    def _rank_splits_into_experts(self) -> PluginSpec:
        if self.r % self.experts:
            raise ValueError(f"r={self.r} is not divisible by experts={self.experts}")
        return self


class ModelSpec(BaseModel):
    name: str
    backbone: Path
    vision_tower: Path
    template: Template
    vq_tokens: int = Field(default=8192, ge=0)
    dtype: DType = "float32"
    plugins: dict[str, PluginSpec]
    vqgan: Path | None = None
    adapter_version: str = Field(default="official", description="Reported in provenance.")
    demo_weights: bool = Field(default=False, description="True for random weights (never medical).")

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelSpec:
        """Load a spec; relative paths in it are relative to the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model spec not found: {path}")
        text = os.path.expandvars(path.read_text())
        unset = sorted(set(re.findall(r"\$\{(\w+)\}", text)))
        if unset:
            raise ValueError(f"{path}: set the environment variable(s) {', '.join(unset)} it refers to")
        raw = yaml.safe_load(text) or {}
        spec = cls.model_validate(raw)
        return spec.resolved(path.parent)

    def resolved(self, root: Path) -> ModelSpec:
        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (root / p).resolve()

        plugins = {
            name: plugin.model_copy(update={"weights": [fix(w) for w in plugin.weights]})
            for name, plugin in self.plugins.items()
        }
        return self.model_copy(
            update={
                "backbone": fix(self.backbone),
                "vision_tower": fix(self.vision_tower),
                "vqgan": fix(self.vqgan) if self.vqgan else None,
                "plugins": plugins,
            }
        )

    def to_yaml(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
