"""HealthGPT's three-stage learning strategy as presets: which tensors of a plugin each stage trains, and
the paper's hyperparameters as defaults.

Sources (the official repository DCDmllm/HealthGPT publishes no training code; its issues only promise it):
- what each stage trains: arXiv 2502.09838, §4.4 "Training Pipeline";
- the numbers: arXiv 2502.09838 (v1/v2), Appendix, Table 7 "Overview of Hyperparameter Configurations",
  columns HealthGPT-M3 and HealthGPT-L14 × Stage-1/2/3 × Comp./Gen.
Where the paper states nothing, the comment says "not stated" and names where our value comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Group = Literal["projector", "hlora", "router", "tables"]
Schedule = Literal["warmup_cosine", "constant"]
Task = Literal["comprehension", "generation"]
GROUPS: tuple[Group, ...] = ("projector", "hlora", "router", "tables")

# §4.4: stage 1 trains the comprehension adapter alone ("the pre-trained LLM and its corresponding H-LoRA
# submodules remain frozen") but the generation adapter *and* its H-LoRA; stage 2 "only the word embedding
# layer and output head", every H-LoRA frozen; stage 3 "only the H-LoRA modules and adapter modules"
# (embedding and head stay as stage 2 left them). "H-LoRA" is A and B plus the router of every layer.
TRAINS: dict[tuple[int, Task], frozenset[Group]] = {
    (1, "comprehension"): frozenset({"projector"}),
    (1, "generation"): frozenset({"projector", "hlora", "router"}),
    (2, "comprehension"): frozenset({"tables"}),
    (2, "generation"): frozenset({"tables"}),
    (3, "comprehension"): frozenset({"hlora", "router", "projector"}),
    (3, "generation"): frozenset({"hlora", "router", "projector"}),
}
STAGE_NAMES = {1: "multi-modal alignment", 2: "heterogeneous plugin adaptation", 3: "instruction tuning"}


@dataclass(frozen=True)
class StagePreset:
    """One stage's trainable groups and hyperparameters; ``dataclasses.replace`` overrides any of them."""

    stage: int
    task: Task
    trains: frozenset[Group]
    projector_lr: float  # Table 7 "Adapter LR"
    lr: float  # Table 7 "Learning Rate": H-LoRA and router, or in stage 2 the embedding/head tables
    batch_size: int  # Table 7 "Global Batch Size" (micro-batches accumulate to it)
    dropout: float  # Table 7 "Dropout Rate": the H-LoRA dropout
    schedule: Schedule  # Table 7 "LR Scheduler": "Warm Up" (stages 1, 3) or "Constant" (stage 2)
    weight_decay: float = 0.0  # Table 7, every stage
    max_length: int = 2048  # Table 7 "Max Sequence Length" (embedded: image patches count)
    # Not stated: Table 7 says only "Warm Up", neither its length nor the decay after it. 0.03 then cosine
    # is the recipe of LLaVA's training scripts, on which HealthGPT's code is built.
    warmup_ratio: float = 0.03
    epochs: int = 1  # not stated; LLaVA's scripts train one epoch per stage
    max_grad_norm: float | None = 1.0  # not stated; the Hugging Face Trainer default LLaVA's scripts use
    # Optimizer: AdamW (Table 7). Its betas and epsilon are not stated: PyTorch's defaults.

    def lr_for(self, group: Group) -> float:
        return self.projector_lr if group == "projector" else self.lr


def preset(stage: int, task: Task, template: str = "phi3_instruct") -> StagePreset:
    """The paper's preset for ``stage`` of a ``task`` plugin. ``template`` picks the model column of
    Table 7: ``phi4_instruct`` is HealthGPT-L14; anything else uses HealthGPT-M3's (the paper gives none
    for the Qwen-based XL32)."""
    if (stage, task) not in TRAINS:
        raise ValueError(f"no stage {stage} for a {task} plugin; stages are 1, 2 and 3")
    l14 = template == "phi4_instruct"
    trains = TRAINS[(stage, task)]
    if stage == 1 and task == "comprehension":
        # Adapter LR 1e-3, Learning Rate "/" (nothing else trains), batch 256, dropout 0: both models.
        return StagePreset(
            1, task, trains, projector_lr=1e-3, lr=0.0, batch_size=256, dropout=0.0, schedule="warmup_cosine"
        )
    if stage == 1:
        # Adapter LR 2e-5; H-LoRA LR 2e-4 (M3) or 1e-4 (L14); batch 64; dropout 0.05.
        return StagePreset(
            1,
            task,
            trains,
            projector_lr=2e-5,
            lr=1e-4 if l14 else 2e-4,
            batch_size=64,
            dropout=0.05,
            schedule="warmup_cosine",
        )
    if stage == 2:
        # Table 7 lists Adapter LR 2e-5 here too, but §4.4 freezes the adapters: only "Learning Rate"
        # 2e-4 (the tables) is used. Batch 32, dropout 0.05, constant schedule; both models, both tasks.
        return StagePreset(
            2,
            task,
            trains,
            projector_lr=2e-5,
            lr=2e-4,
            batch_size=32,
            dropout=0.05,
            schedule="constant",
            warmup_ratio=0.0,
        )
    # Stage 3: Adapter LR 2e-5, H-LoRA LR 2e-4, batch 128 (comprehension) or 64 (generation), dropout 0.05.
    return StagePreset(
        3,
        task,
        trains,
        projector_lr=2e-5,
        lr=2e-4,
        batch_size=128 if task == "comprehension" else 64,
        dropout=0.05,
        schedule="warmup_cosine",
    )
