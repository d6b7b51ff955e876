"""Our own adapter format: the plugin's tensors as safetensors (official key names, so the same loader
reads both) plus a JSON file with what is needed to rebuild the plugin and trace where it came from."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import torch

from models.healthgpt import HealthGPT
from models.spec import ModelSpec, PluginSpec
from models.weights import OFFICIAL_PREFIX, write_state_dict

WEIGHTS_FILE = "adapter.safetensors"
METADATA_FILE = "adapter.json"


def save_adapter(
    model: HealthGPT, plugin: str, out_dir: Path, version: str, parent: str | None = None
) -> Path:
    """Write ``plugin`` of ``model`` to ``out_dir`` (created; must not hold an adapter already)."""
    if plugin not in model.spec.plugins:
        raise ValueError(f"unknown plugin {plugin!r}")
    if (out_dir / METADATA_FILE).exists():
        raise FileExistsError(f"{out_dir} already holds an adapter; versions are immutable")
    state: dict[str, torch.Tensor] = {
        OFFICIAL_PREFIX + key: param.detach().to("cpu").clone()
        for key, param in model._plugin_parameters(plugin).items()
    }
    for key, table in model.overrides.get(plugin, {}).items():
        state[OFFICIAL_PREFIX + key] = table.detach().to("cpu").clone()
    write_state_dict(state, out_dir / WEIGHTS_FILE)
    spec = model.spec.plugins[plugin]
    metadata = {
        "format": "healthagent-hlora/1",
        "plugin": plugin,
        "version": version,
        "parent": parent,
        "base_model": model.spec.name,
        "task": spec.task,
        "r": spec.r,
        "alpha": spec.alpha,
        "experts": spec.experts,
        "vision_layer": spec.vision_layer,
        "overrides_tables": sorted(model.overrides.get(plugin, {})),
        "vocab_size": int(model.llm.get_input_embeddings().weight.shape[0]),
        "created_at": datetime.now(UTC).isoformat(),
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out_dir


def adapter_plugin_spec(adapter_dir: Path) -> tuple[PluginSpec, dict]:
    """The :class:`PluginSpec` that loads a saved adapter, and its metadata."""
    metadata_path = adapter_dir / METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(f"not an adapter folder (no {METADATA_FILE}): {adapter_dir}")
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("format") != "healthagent-hlora/1":
        raise ValueError(f"{metadata_path}: unknown adapter format {metadata.get('format')!r}")
    spec = PluginSpec(
        task=metadata["task"],
        weights=[adapter_dir / WEIGHTS_FILE],
        r=metadata["r"],
        alpha=metadata["alpha"],
        experts=metadata["experts"],
        vision_layer=metadata["vision_layer"],
    )
    return spec, metadata


def with_adapter(spec: ModelSpec, plugin: str, adapter_dir: Path) -> ModelSpec:
    """``spec`` with ``plugin`` served by the adapter in ``adapter_dir``, whose version it then reports."""
    if plugin not in spec.plugins:
        raise ValueError(f"unknown plugin {plugin!r}; this model has {sorted(spec.plugins)}")
    plugin_spec, metadata = adapter_plugin_spec(adapter_dir)
    if metadata["task"] != spec.plugins[plugin].task:
        raise ValueError(
            f"{adapter_dir} is a {metadata['task']} adapter; plugin {plugin!r} is {spec.plugins[plugin].task}"
        )
    if metadata.get("base_model") != spec.name:
        raise ValueError(f"{adapter_dir} was trained on {metadata.get('base_model')!r}, not {spec.name!r}")
    return spec.model_copy(
        update={"plugins": {**spec.plugins, plugin: plugin_spec}, "adapter_version": metadata["version"]}
    )


class AdapterIntegrityError(ValueError):
    """An adapter's weights are not the bytes that were registered."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(files: list[Path], sha256: str) -> None:
    """Refuse to load an adapter whose weights (one file, as :func:`save_adapter` writes) differ from the
    registered sha256 — a changed, truncated or swapped file."""
    if len(files) != 1:
        raise AdapterIntegrityError(f"a registered adapter has one weights file, not {len(files)}")
    found = file_sha256(files[0])
    if found != sha256:
        raise AdapterIntegrityError(f"{files[0]}: sha256 {found} is not the registered {sha256}")
