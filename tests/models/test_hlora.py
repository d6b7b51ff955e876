"""H-LoRA layer math against its closed form."""

from __future__ import annotations

import torch
from torch import nn

from models.hlora import HLoRALinear, wrap_linears


def test_forward_matches_closed_form() -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 10, bias=True)
    layer = HLoRALinear(base)
    plugin = layer.add_plugin("p", r=8, alpha=16, experts=4)
    nn.init.normal_(plugin.lora_B.weight)
    x = torch.randn(3, 5, 12)

    layer.routing = None
    assert torch.equal(layer(x), base(x))

    layer.routing = [("p", None)]
    got = layer(x)
    scaling, t = 16 / 8 * 4, 2
    gate = torch.softmax(x @ plugin.lora_route.weight.T, dim=-1)
    expected = base(x)
    for k in range(4):
        a_k = plugin.lora_A.weight[k * t : (k + 1) * t]
        b_k = plugin.lora_B.weight[:, k * t : (k + 1) * t]
        expected = expected + scaling * gate[..., k : k + 1] * (x @ a_k.T @ b_k.T)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gate_broadcast_gives_the_official_products_exactly() -> None:
    """The gate is applied per expert through a broadcast view; the products must be the official
    formulation's (gate repeated over each expert's rank rows) to the last bit, in every precision."""
    torch.manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        layer = HLoRALinear(nn.Linear(16, 9).to(dtype))
        plugin = layer.add_plugin("p", r=12, alpha=24, experts=4)
        nn.init.normal_(plugin.lora_B.weight)
        for shape in ((5, 16), (2, 3, 16)):
            x = torch.randn(shape, dtype=dtype)
            with torch.no_grad():
                low_rank = plugin.lora_A(x) * plugin.scaling
                gate = torch.softmax(plugin.lora_route(x), dim=-1).to(dtype)
                official = plugin.lora_B(torch.repeat_interleave(gate, 3, dim=-1) * low_rank)
                assert torch.equal(plugin.delta(x, dtype), official), (dtype, shape)


def test_fresh_plugin_is_identity_and_plugins_are_independent() -> None:
    torch.manual_seed(1)
    layer = HLoRALinear(nn.Linear(6, 6))
    layer.add_plugin("a", r=4, alpha=8, experts=2)
    other = layer.add_plugin("b", r=4, alpha=8, experts=2)
    x = torch.randn(2, 6)
    layer.routing = [("a", None)]
    torch.testing.assert_close(layer(x), layer.base(x))  # B starts at zero
    nn.init.normal_(other.lora_B.weight)
    torch.testing.assert_close(layer(x), layer.base(x))  # b's weights do not leak into a
    layer.routing = [("b", None)]
    assert not torch.allclose(layer(x), layer.base(x))


def test_wrap_linears_replaces_only_named_leaves() -> None:
    model = nn.Sequential()
    model.add_module("o_proj", nn.Linear(4, 4))
    model.add_module("lm_head", nn.Linear(4, 4))
    wrapped = wrap_linears(model, {"o_proj"})
    assert list(wrapped) == ["o_proj"]
    assert isinstance(model.o_proj, HLoRALinear) and isinstance(model.lm_head, nn.Linear)


def test_rows_use_their_own_plugin() -> None:
    torch.manual_seed(2)
    layer = HLoRALinear(nn.Linear(6, 5))
    for name in ("a", "b"):
        nn.init.normal_(layer.add_plugin(name, r=4, alpha=8, experts=2).lora_B.weight)
    x = torch.randn(3, 7, 6)
    alone = {}
    for name in ("a", "b"):
        layer.routing = [(name, None)]
        alone[name] = layer(x)
    layer.routing = [("a", torch.tensor([0, 2])), ("b", torch.tensor([1]))]
    mixed = layer(x)
    torch.testing.assert_close(mixed[[0, 2]], alone["a"][[0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], alone["b"][1], rtol=0, atol=1e-6)
