"""The objectives of a refresh, on sequence log-probabilities (sums over answer tokens).

The reference values come from the frozen starting adapter (the champion); every preference loss is a
function of how far the trained policy moved from it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def sft_token_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of the answer tokens (divide by the token count for the mean)."""
    return -(logprobs * mask).sum()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al., 2023): ``-log σ(β [(π_c - ref_c) - (π_r - ref_r)])``.

    log 2 when the policy still equals the reference; below it once the chosen answer gained on the
    rejected one relative to the reference."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-row KTO loss (Ethayarajh et al., 2024): ``λ_D (1 - σ(β (r - z)))`` for a desirable answer and
    ``λ_U (1 - σ(β (z - r)))`` for an undesirable one, with ``r = π - ref`` and ``z`` the (detached,
    non-negative) KL estimate of the policy from the reference."""
    reward = policy - reference
    value = torch.where(desirable, torch.sigmoid(beta * (reward - kl)), torch.sigmoid(beta * (kl - reward)))
    weight = torch.where(
        desirable,
        torch.tensor(desirable_weight, device=reward.device),
        torch.tensor(undesirable_weight, device=reward.device),
    )
    return weight * (1 - value)
