"""Training HealthGPT plugins: the paper's three stages as presets, and a feedback refresh (stage 3 on one
plugin with supervised, DPO and KTO-style losses against the frozen champion). Imports nothing outside
``models``; a run is a plain PyTorch loop over our own H-LoRA layers."""

from models.training.data import Row, parse_row, read_rows, rows_digest
from models.training.losses import dpo_loss, kto_loss, sft_token_nll
from models.training.presets import GROUPS, StagePreset, preset
from models.training.trainer import Progress, TrainConfig, TrainResult, save_trained, train

__all__ = [
    "GROUPS",
    "Progress",
    "Row",
    "StagePreset",
    "TrainConfig",
    "TrainResult",
    "dpo_loss",
    "kto_loss",
    "parse_row",
    "preset",
    "read_rows",
    "rows_digest",
    "save_trained",
    "sft_token_nll",
    "train",
]
