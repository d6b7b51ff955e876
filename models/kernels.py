"""Linear products for inference on the CPU through oneDNN's inner product instead of MKL's sgemm.

Why: measured on the 2-core development machine (float32, M3 widths), MKL's sgemm takes 2-3.5x longer
for 2-32 input rows than for one (its small-batch path is slow), and 2-32 rows is every decode step of
a batch; oneDNN's inner product reads the weight where it lies (no packed copy is kept, so no memory is
added) and was 2.5-3.5x faster at 4-32 rows, 1.2-1.6x faster at prefill sizes (256-1024 rows), and
faster at one row too. Its float32 results differ from sgemm's only in summation order.

The op has no autograd, so a product that needs gradients (training) takes ``F.linear``; GPU tensors
and half precision always take ``F.linear``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _onednn_linear_available() -> bool:
    """Built in, and giving F.linear's answer on a small product here (a build or CPU where the op
    misbehaves falls back to F.linear instead of failing a request)."""
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        generator = torch.Generator().manual_seed(0)
        x, weight = torch.randn(3, 24, generator=generator), torch.randn(40, 24, generator=generator)
        got = torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [None], "")
        return bool(torch.allclose(got, F.linear(x, weight), atol=1e-4, rtol=1e-4))
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_available()


def onednn_for(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether inference products on ``device`` in ``dtype`` go through oneDNN: float32 on the CPU, where
    the library is built in."""
    return ONEDNN_LINEAR and device.type == "cpu" and dtype == torch.float32


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, onednn: bool = False
) -> torch.Tensor:
    """``x @ weight.T + bias``; through oneDNN when ``onednn`` and nothing needs a gradient."""
    if (
        onednn
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [None], "")
    return F.linear(x, weight, bias)
