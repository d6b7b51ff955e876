"""Reading plugin weight files in the released formats and auditing what they contain.

The official loader calls ``load_state_dict(strict=False)`` and silently ignores missing keys, so a
wrong file yields a model that runs and is wrong. Here every key is accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# The released files are saved from PeftModel -> LoraModel -> the LLaVA causal LM.
OFFICIAL_PREFIX = "base_model.model."


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.bin`` (torch.save, loaded with weights_only) or ``.safetensors`` file, on CPU."""
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat dict of tensors")
    return state


def write_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def strip_official_prefix(key: str) -> str:
    return key.removeprefix(OFFICIAL_PREFIX)


@dataclass
class LoadReport:
    """What loading one plugin's files did: every expected key is loaded or reported missing."""

    plugin: str
    files: list[str]
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def raise_if_incomplete(self) -> None:
        if self.ok:
            return
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing (e.g. {self.missing[:3]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (e.g. {self.unexpected[:3]})")
        raise ValueError(f"plugin {self.plugin!r} from {self.files}: " + "; ".join(parts))
