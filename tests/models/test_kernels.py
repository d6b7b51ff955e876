"""Inference products through oneDNN (models.kernels): same results as F.linear up to summation order,
F.linear wherever a gradient is needed, and the default a model serves (and the parity tests check)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from models import kernels
from models.contract import GenerationRequest
from models.healthgpt import HealthGPT
from models.spec import ModelSpec

needs_onednn = pytest.mark.skipif(not kernels.ONEDNN_LINEAR, reason="torch built without oneDNN")


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 48), (2, 5, 48), (1, 1, 48), (3, 0, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_onednn_product_equals_f_linear(shape: tuple[int, ...], with_bias: bool) -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(80, 48), torch.randn(80) if with_bias else None
    x = torch.randn(*shape)
    got = kernels.linear(x, weight, bias, onednn=True)
    assert got.shape == (*shape[:-1], 80)
    torch.testing.assert_close(got, F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_non_contiguous_input_and_transposed_weight() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 10, 32)[:, ::2]
    weight = torch.randn(32, 24).t()
    torch.testing.assert_close(kernels.linear(x, weight, onednn=True), F.linear(x, weight))


def test_products_needing_gradients_take_f_linear() -> None:
    torch.manual_seed(2)
    weight = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(3, 5, requires_grad=True)
    y = kernels.linear(x, weight, onednn=True)
    y.sum().backward()  # the oneDNN op has no autograd: this works only through F.linear
    torch.testing.assert_close(x.grad, weight.detach().sum(0).expand(3, 5))
    assert weight.grad is not None
    with torch.no_grad():
        assert kernels.linear(x, weight, onednn=True).grad_fn is None


def test_only_float32_on_cpu_chooses_onednn() -> None:
    cpu = torch.device("cpu")
    assert kernels.onednn_for(cpu, torch.float32) is kernels.ONEDNN_LINEAR
    assert not kernels.onednn_for(cpu, torch.bfloat16)
    assert not kernels.onednn_for(torch.device("cuda"), torch.float32)
    # Half precision never reaches the op, even when asked.
    x, weight = torch.randn(2, 4, dtype=torch.bfloat16), torch.randn(3, 4, dtype=torch.bfloat16)
    torch.testing.assert_close(kernels.linear(x, weight, onednn=True), F.linear(x, weight))


def test_the_served_model_uses_onednn_where_available(tiny_model: HealthGPT) -> None:
    # The official parity tests build their model with the defaults: they check this path.
    assert tiny_model.onednn is kernels.ONEDNN_LINEAR
    assert all(layer.onednn is tiny_model.onednn for layer in tiny_model.layers.values())


@needs_onednn
def test_onednn_and_f_linear_models_answer_alike(tiny_spec: ModelSpec, tiny_model: HealthGPT) -> None:
    plain = HealthGPT(tiny_spec, onednn=False)
    assert not plain.onednn and not any(layer.onednn for layer in plain.layers.values())
    # One batch holding both plugins: rows of different lengths, per-row H-LoRA, both output heads.
    requests = [
        GenerationRequest("Describe the findings in detail.", None, "comprehension", 12),
        GenerationRequest("Generate the MRI.", None, "generation", 12),
    ]
    got, expected = tiny_model.generate(requests), plain.generate(requests)
    assert [a.token_ids for a in got] == [a.token_ids for a in expected]
    assert all(len(a.token_ids) > 0 for a in got)
