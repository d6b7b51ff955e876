"""H-LoRA: a linear layer with several resident low-rank plugins, each a soft mixture of experts.

For a plugin: ``y = W x + b + s * B (repeat_interleave(softmax(R x), t) * (A x))`` with one A
``[r, in]``, one B ``[out, r]``, a router R ``[experts, in]``, ``t = r / experts`` and
``s = alpha / r * experts``. Expert k owns rank rows ``[k t, (k+1) t)``. Routing is per token and
dense, so a plugin cannot be merged into W.

Each row of a batch may use a different plugin (or none): ``routing`` holds, per plugin, the rows it
applies to; it is set for a whole forward pass by the model that owns the layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.kernels import linear


class HLoRAPlugin(nn.Module):
    def __init__(self, in_features: int, out_features: int, r: int, alpha: int, experts: int) -> None:
        super().__init__()
        if r % experts:
            raise ValueError(f"rank {r} is not divisible by {experts} experts")
        self.rank = r
        self.experts = experts
        self.rank_per_expert = r // experts
        self.scaling = alpha / r * experts
        # Dropout on the scaled low-rank activations, as the official layer; applies only in training mode
        # and is a plain float, so it adds no state-dict keys.
        self.dropout = 0.0
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        self.lora_route = nn.Linear(in_features, experts, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)  # a fresh plugin starts as the identity of the base layer
        nn.init.kaiming_uniform_(self.lora_route.weight, a=math.sqrt(5))

    def delta(self, x: torch.Tensor, dtype: torch.dtype, onednn: bool = False) -> torch.Tensor:
        # Two separate products, in the official order: fusing A and the router into one matmul was
        # measured to move float32 logits by up to 1.2e-4 (different BLAS blocking), beyond parity. The
        # router stays on F.linear for the same reason (through oneDNN it moved the fusion fixture's logits
        # to 1.6e-4); A and B through oneDNN (models.kernels) keep every fixture within 7.7e-5.
        low_rank = linear(x, self.lora_A.weight, onednn=onednn) * self.scaling
        if self.training and self.dropout:
            low_rank = F.dropout(low_rank, self.dropout)
        gate = torch.softmax(self.lora_route(x), dim=-1).to(dtype)
        # Each expert's gate times its own rank rows: the products of repeat_interleave(gate, t) * low_rank,
        # element for element, as a broadcast over a view (no repeated copy of the gate: fewer operators
        # per layer, which is what a decode step on a GPU waits on).
        experts = low_rank.unflatten(-1, (self.experts, self.rank_per_expert))
        mixed = (experts * gate.unsqueeze(-1)).flatten(-2)
        return linear(mixed, self.lora_B.weight, onednn=onednn)


Routing = list[tuple[str, torch.Tensor | None]]  # (plugin, row indices or None for every row)


class HLoRALinear(nn.Module):
    """Wraps a base ``nn.Linear``; ``routing`` says which plugin applies to which rows (None = base).
    ``onednn``: inference products through oneDNN (models.kernels), set by the model for float32 on CPU."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.plugins = nn.ModuleDict()
        self.routing: Routing | None = None
        self.onednn = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def add_plugin(self, name: str, r: int, alpha: int, experts: int) -> HLoRAPlugin:
        plugin = HLoRAPlugin(self.in_features, self.out_features, r, alpha, experts)
        plugin.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        self.plugins[name] = plugin
        return plugin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.base.weight, self.base.bias, onednn=self.onednn)
        if not self.routing:
            return y
        # In place: y is this layer's own fresh product, and no backward pass needs it (a linear's
        # gradient needs its input and weight), so each plugin adds without copying it.
        for name, rows in self.routing:
            plugin = self.plugins[name]
            if rows is None:
                y += plugin.delta(x, y.dtype, self.onednn)
            else:
                y.index_add_(0, rows, plugin.delta(x.index_select(0, rows), y.dtype, self.onednn))
        return y


def wrap_linears(model: nn.Module, leaf_names: set[str]) -> dict[str, HLoRALinear]:
    """Replace every ``nn.Linear`` whose last name component is in ``leaf_names``; returns them by name."""
    wrapped: dict[str, HLoRALinear] = {}
    for full_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in leaf_names and isinstance(child, nn.Linear):
                layer = HLoRALinear(child)
                setattr(module, child_name, layer)
                wrapped[f"{full_name}.{child_name}" if full_name else child_name] = layer
    if not wrapped:
        raise ValueError(f"no linear layers named {sorted(leaf_names)} found")
    return wrapped
