"""A plain PyTorch loop that trains one plugin of a loaded :class:`HealthGPT` in one stage.

Only the stage's groups of that plugin get gradients (see :mod:`models.training.presets`); the shared base
model, the CLIP tower and every other plugin are never touched, so the result saves as an ordinary
adapter. Gradient accumulation reaches the global batch; on a GPU the forward runs under bf16 or fp16
autocast over float32 master copies of the trained tensors. A checkpoint (trained tensors, optimizer,
schedule, RNG, step, reference log-probs) resumes to the same final weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from models.adapters import save_adapter
from models.healthgpt import HealthGPT
from models.training.data import Row, rows_digest
from models.training.losses import dpo_loss, kto_loss, sft_token_nll
from models.training.presets import GROUPS, StagePreset, preset

Precision = Literal["auto", "fp32", "bf16", "fp16"]
CHECKPOINT_FILE = "checkpoint.pt"
TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class TrainConfig:
    plugin: str
    stage: int = 3  # picks the preset when ``hyper`` is None
    hyper: StagePreset | None = None  # None: the paper's preset for the stage and the plugin's task
    micro_batch_size: int = 4  # rows per forward; accumulated up to hyper.batch_size per optimizer step
    seed: int = 0
    # auto: the model's own half type if it has one; else bf16 (or fp16) autocast on a GPU, fp32 on CPU
    precision: Precision = "auto"
    sft_weight: float = 1.0
    dpo_weight: float = 1.0
    dpo_beta: float = 0.1  # the DPO paper's default (Rafailov et al., 2023)
    kto_weight: float = 1.0
    kto_beta: float = 0.1  # the KTO paper's default (Ethayarajh et al., 2024)
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    checkpoint_dir: Path | None = None  # resumes from a checkpoint found there
    checkpoint_every: int = 0  # optimizer steps; 0: only when stopped early and at the end


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    tokens_per_second: float
    eta_seconds: float


@dataclass
class TrainResult:
    plugin: str
    stage: int
    steps: int  # optimizer steps done, resumed ones included
    total_steps: int
    examples: int
    losses: list[float]
    seconds: float  # this invocation, preparation included
    tokens: int  # embedded tokens (image patches included) forwarded in this invocation
    completed: bool
    resumed_from: int  # the step a checkpoint resumed from; 0 for a fresh run
    data_sha256: str
    hyper: dict = field(default_factory=dict)

    @property
    def loss_first(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def loss_last(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    def summary(self) -> dict:
        return {
            "plugin": self.plugin,
            "stage": self.stage,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "steps": self.steps,
            "total_steps": self.total_steps,
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
            "completed": self.completed,
            "resumed_from": self.resumed_from,
            "data_sha256": self.data_sha256,
        }


@dataclass
class _Sequence:
    ids: list[int]
    answer_length: int
    patches: torch.Tensor | None  # CLIP features at the plugin's layer (the tower is frozen: computed once)
    tokens: int  # embedded length


@dataclass
class _Item:
    row: Row
    sequences: list[_Sequence]  # sft: [answer]; pair: [chosen, rejected]; kto: [answer, mismatched?]
    reference: list[float] = field(default_factory=list)  # sequence log-probs under the starting weights


def train(
    model: HealthGPT,
    rows: Sequence[Row],
    config: TrainConfig,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``config.plugin`` of ``model`` in place on ``rows`` (a model that is not serving: its tensors
    change under it). ``should_stop`` is asked after every optimizer step; stopping early checkpoints (when
    a directory is set) and returns ``completed=False``."""
    started = time.perf_counter()
    if config.plugin not in model.spec.plugins:
        raise ValueError(f"unknown plugin {config.plugin!r}; this model has {sorted(model.spec.plugins)}")
    if not rows:
        raise ValueError("no training rows")
    if config.micro_batch_size < 1:
        raise ValueError("micro_batch_size must be at least 1")
    plugin = config.plugin
    hyper = config.hyper or preset(config.stage, model.spec.plugins[plugin].task, model.spec.template)
    if hyper.batch_size < 1 or hyper.epochs < 1:
        raise ValueError("batch_size and epochs must be at least 1")
    precision = _precision(config.precision, model)
    digest = rows_digest(list(rows))
    fingerprint = _fingerprint(model, config, hyper, precision, digest)
    torch.manual_seed(config.seed)  # H-LoRA dropout draws from the global generator

    items = _prepare(model, plugin, rows, hyper.max_length)  # bad rows fail before the model changes
    groups = _trainable(model, plugin, hyper)
    steps_per_epoch = math.ceil(len(items) / hyper.batch_size)
    total_steps = steps_per_epoch * hyper.epochs
    autocast = (
        torch.autocast(model.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision in ("bf16", "fp16")
        else nullcontext()
    )
    with _training_mode(model, plugin, groups, hyper, precision):
        tensors = {key: tensor for group in groups.values() for key, tensor in group.items()}
        optimizer = torch.optim.AdamW(
            [{"params": list(g.values()), "lr": hyper.lr_for(name)} for name, g in groups.items()],
            weight_decay=hyper.weight_decay,
        )
        warmup = math.ceil(hyper.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_factor(hyper.schedule, warmup, total_steps)
        )
        scaler = torch.amp.GradScaler(model.device.type) if precision == "fp16" else None
        checkpoint = config.checkpoint_dir / CHECKPOINT_FILE if config.checkpoint_dir else None
        losses: list[float] = []
        step = 0
        if checkpoint is not None and checkpoint.is_file():
            step, losses = _resume(checkpoint, fingerprint, tensors, optimizer, scheduler, scaler, items)
        else:
            _set_plugin_training(model, plugin, False)  # the reference is the champion without dropout
            with autocast:
                _reference_logprobs(model, plugin, items, config.micro_batch_size)
            _set_plugin_training(model, plugin, True)
        resumed_from = step
        tokens = 0
        loop_started = time.perf_counter()
        completed = True
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(config.seed + epoch))
            picked = order[index * hyper.batch_size : (index + 1) * hyper.batch_size].tolist()
            batch = [items[i] for i in picked]
            loss, step_tokens = _step(model, plugin, batch, config, hyper, optimizer, scaler, autocast)
            scheduler.step()
            step += 1
            tokens += step_tokens
            losses.append(loss)
            if progress is not None:
                elapsed = time.perf_counter() - loop_started
                done = step - resumed_from
                progress(
                    Progress(
                        step,
                        total_steps,
                        epoch,
                        loss,
                        max(scheduler.get_last_lr()),
                        tokens / elapsed if elapsed else 0.0,
                        elapsed / done * (total_steps - step),
                    )
                )
            stop = step < total_steps and should_stop is not None and should_stop()
            due = config.checkpoint_every and step % config.checkpoint_every == 0
            if checkpoint is not None and (stop or due or step == total_steps):
                _save_checkpoint(
                    checkpoint, fingerprint, step, tensors, optimizer, scheduler, scaler, losses, items
                )
            if stop:
                completed = False
                break
    return TrainResult(
        plugin=plugin,
        stage=hyper.stage,
        steps=step,
        total_steps=total_steps,
        examples=len(items),
        losses=losses,
        seconds=time.perf_counter() - started,
        tokens=tokens,
        completed=completed,
        resumed_from=resumed_from,
        data_sha256=digest,
        hyper=_plain(asdict(hyper)),
    )


def save_trained(
    model: HealthGPT, result: TrainResult, out_dir: Path, version: str, parent: str | None = None
) -> Path:
    """Write the trained plugin as an adapter folder (:func:`models.adapters.save_adapter`), with a
    ``training.json`` beside it recording how it was made."""
    save_adapter(model, result.plugin, out_dir, version, parent=parent)
    record = {**result.summary(), "losses": result.losses, "hyperparameters": result.hyper}
    (out_dir / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


# -- set-up ---------------------------------------------------------------------------------------------
def _precision(requested: Precision, model: HealthGPT) -> Precision:
    half = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(model.dtype)
    if requested == "auto":
        if half is not None:
            return half
        if model.device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp32" and half is not None:
        raise ValueError(f"fp32 training needs a float32 model, this one is {model.dtype}; use {half}")
    if half is not None and requested != half:
        # Autocast cannot combine two half types (e.g. torch.cat of float16 and bfloat16 pieces).
        raise ValueError(f"a {model.dtype} model trains under {half} autocast, not {requested}")
    return requested


def _fingerprint(
    model: HealthGPT, config: TrainConfig, hyper: StagePreset, precision: str, digest: str
) -> str:
    """What must match for a checkpoint to resume: everything that changes the arithmetic."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("checkpoint_dir", "checkpoint_every")}
    settings.update(hyper=_plain(asdict(hyper)), precision=precision, data=digest)
    settings.update(model=model.spec.name, start=model.spec.adapter_version)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _plain(value: dict) -> dict:
    return {k: sorted(v) if isinstance(v, frozenset) else v for k, v in value.items()}


def _trainable(model: HealthGPT, plugin: str, hyper: StagePreset) -> dict[str, dict[str, torch.Tensor]]:
    if "tables" in hyper.trains:
        model.own_tables(plugin)  # stage 2 gives the plugin its own copy to train
    groups = model.plugin_parameter_groups(plugin)
    return {name: groups[name] for name in GROUPS if name in hyper.trains and groups[name]}


def _all_tensors(model: HealthGPT) -> Iterator[torch.Tensor]:
    yield from model.llm.parameters()
    yield from model.vision.parameters()
    yield from model.projectors.parameters()
    for tables in model.overrides.values():
        yield from tables.values()


def _set_plugin_training(model: HealthGPT, plugin: str, training: bool) -> None:
    for layer in model.layers.values():
        layer.plugins[plugin].train(training)


@contextmanager
def _training_mode(
    model: HealthGPT,
    plugin: str,
    groups: dict[str, dict[str, torch.Tensor]],
    hyper: StagePreset,
    precision: str,
) -> Iterator[None]:
    """Only the trained tensors require grad (float32 masters under autocast); the plugin's H-LoRA runs
    with the stage's dropout. Everything is put back afterwards, the trained values in the model dtype."""
    flags = [(t, t.requires_grad) for t in _all_tensors(model)]
    trained = [t for group in groups.values() for t in group.values()]
    dropouts = [(layer.plugins[plugin], layer.plugins[plugin].dropout) for layer in model.layers.values()]
    try:
        for tensor, _ in flags:
            tensor.requires_grad_(False)
        for tensor in trained:
            if precision != "fp32":
                tensor.data = tensor.data.float()
            tensor.requires_grad_(True)
        for layer_plugin, _ in dropouts:
            layer_plugin.dropout = hyper.dropout
        _set_plugin_training(model, plugin, True)
        yield
    finally:
        _set_plugin_training(model, plugin, False)
        for layer_plugin, dropout in dropouts:
            layer_plugin.dropout = dropout
        for tensor in trained:
            tensor.grad = None
            tensor.data = tensor.data.to(model.dtype)
        for tensor, flag in flags:
            tensor.requires_grad_(flag)


@torch.no_grad()
def _prepare(model: HealthGPT, plugin: str, rows: Sequence[Row], max_length: int) -> list[_Item]:
    """Tokenize every row and run the (frozen) CLIP tower once per image."""
    layer = model.spec.plugins[plugin].vision_layer
    patches_of: dict[Path, torch.Tensor] = {}

    def sequence(row: Row, answer: str) -> _Sequence:
        patches = None
        if row.image is not None:
            if row.image not in patches_of:
                with Image.open(row.image) as image:
                    pixels = model.pixel_values(image)
                patches_of[row.image] = model.vision_features(pixels, [layer])[layer].cpu()
            patches = patches_of[row.image]
        ids, answer_length = model.example_ids(row.question, answer, patches is not None, plugin)
        tokens = len(ids) + (patches.shape[1] - 1 if patches is not None else 0)
        if tokens > max_length:
            raise ValueError(f"{row.source}: {tokens} tokens, more than max_length {max_length}")
        return _Sequence(ids, answer_length, patches, tokens)

    items = []
    for row in rows:
        answers = [row.answer] if row.rejected is None else [row.answer, row.rejected]
        items.append(_Item(row, [sequence(row, answer) for answer in answers]))
    # KTO's KL term compares the policy with the reference on mismatched pairs: each rated question with
    # the next rated row's answer (a fixed pairing, so the reference values are computed once).
    rated = [item for item in items if item.row.kind == "kto"]
    if len(rated) > 1:
        for item, other in zip(rated, rated[1:] + rated[:1], strict=True):
            item.sequences.append(sequence(item.row, other.row.answer))
    return items


def _sequence_logprobs(model: HealthGPT, plugin: str, sequences: Sequence[_Sequence]) -> torch.Tensor:
    logprobs, _ = model.token_logprobs([(s.ids, s.answer_length, s.patches) for s in sequences], plugin)
    return logprobs.sum(-1)


@torch.no_grad()
def _reference_logprobs(model: HealthGPT, plugin: str, items: Sequence[_Item], micro: int) -> None:
    """The starting weights' (champion's) log-probs of every sequence a preference loss compares."""
    preference = [item for item in items if item.row.kind != "sft"]
    for start in range(0, len(preference), micro):
        chunk = preference[start : start + micro]
        values = _sequence_logprobs(model, plugin, [s for item in chunk for s in item.sequences]).tolist()
        for item in chunk:
            item.reference, values = values[: len(item.sequences)], values[len(item.sequences) :]


def _lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:  # linear warm-up, reaching the full rate on the last warm-up step
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


# -- one optimizer step ---------------------------------------------------------------------------------
def _step(
    model: HealthGPT,
    plugin: str,
    batch: list[_Item],
    config: TrainConfig,
    hyper: StagePreset,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    autocast,
) -> tuple[float, int]:
    """Accumulate the global batch in micro-batches; each loss is normalised by the global batch's counts,
    so the gradient does not depend on how the batch is split."""
    sft = [item for item in batch if item.row.kind == "sft"]
    sft_tokens = sum(item.sequences[0].answer_length for item in sft)
    pairs = sum(item.row.kind == "pair" for item in batch)
    rated = sum(item.row.kind == "kto" for item in batch)
    total, tokens = 0.0, 0
    for start in range(0, len(batch), config.micro_batch_size):
        micro = batch[start : start + config.micro_batch_size]
        with autocast:
            loss = _micro_loss(model, plugin, micro, config, sft_tokens, pairs, rated)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss.detach())
        tokens += sum(s.tokens for item in micro for s in item.sequences)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if hyper.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, hyper.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, tokens


def _micro_loss(
    model: HealthGPT,
    plugin: str,
    micro: list[_Item],
    config: TrainConfig,
    sft_tokens: int,
    pairs: int,
    rated: int,
) -> torch.Tensor:
    # One forward for every sequence that needs a gradient; KTO's mismatched pairs only feed a detached
    # KL estimate.
    sequences, owners = [], []
    for item in micro:
        scored = item.sequences[:2] if item.row.kind == "pair" else item.sequences[:1]
        owners.append(range(len(sequences), len(sequences) + len(scored)))
        sequences.extend(scored)
    logprobs, real = model.token_logprobs([(s.ids, s.answer_length, s.patches) for s in sequences], plugin)
    totals = logprobs.sum(-1)
    loss = totals.new_zeros(())
    sft = [owners[i][0] for i, item in enumerate(micro) if item.row.kind == "sft"]
    if sft:
        loss = loss + config.sft_weight * sft_token_nll(logprobs[sft], real[sft]) / sft_tokens
    paired = [(i, item) for i, item in enumerate(micro) if item.row.kind == "pair"]
    if paired:
        chosen = totals[[owners[i][0] for i, _ in paired]]
        rejected = totals[[owners[i][1] for i, _ in paired]]
        reference = torch.tensor([item.reference[:2] for _, item in paired], device=totals.device)
        per_pair = dpo_loss(chosen, rejected, reference[:, 0], reference[:, 1], config.dpo_beta)
        loss = loss + config.dpo_weight * per_pair.sum() / pairs
    kto = [(i, item) for i, item in enumerate(micro) if item.row.kind == "kto"]
    if kto:
        policy = totals[[owners[i][0] for i, _ in kto]]
        reference = torch.tensor([item.reference[0] for _, item in kto], device=totals.device)
        desirable = torch.tensor([bool(item.row.desirable) for _, item in kto], device=totals.device)
        per_row = kto_loss(
            policy,
            reference,
            desirable,
            _kl_estimate(model, plugin, [it for _, it in kto]),
            config.kto_beta,
            config.kto_desirable_weight,
            config.kto_undesirable_weight,
        )
        loss = loss + config.kto_weight * per_row.sum() / rated
    return loss


@torch.no_grad()
def _kl_estimate(model: HealthGPT, plugin: str, items: list[_Item]) -> torch.Tensor:
    """KTO's reference point: the mean log-ratio of policy and reference on mismatched pairs, clamped at
    0 and detached; 0 with fewer than two rated rows (no mismatched pair exists)."""
    mismatched = [item for item in items if len(item.sequences) > 1]
    if not mismatched:
        return torch.zeros((), device=model.device)
    policy = _sequence_logprobs(model, plugin, [item.sequences[1] for item in mismatched])
    reference = torch.tensor([item.reference[1] for item in mismatched], device=policy.device)
    return (policy - reference).mean().clamp(min=0)


# -- checkpoints ----------------------------------------------------------------------------------------
def _save_checkpoint(
    path: Path,
    fingerprint: str,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    losses: list[float],
    items: Sequence[_Item],
) -> None:
    state = {
        "format": "healthagent-train-checkpoint/1",
        "fingerprint": fingerprint,
        "step": step,
        "tensors": {key: tensor.detach().cpu() for key, tensor in tensors.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "losses": losses,
        "reference": [item.reference for item in items],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a crash mid-write leaves the previous checkpoint intact


@torch.no_grad()
def _resume(
    path: Path,
    fingerprint: str,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    items: Sequence[_Item],
) -> tuple[int, list[float]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} is a checkpoint of a different run (model, data or settings differ)")
    if set(state["tensors"]) != set(tensors):
        raise ValueError(f"{path} holds other tensors than this run trains")
    for key, tensor in tensors.items():
        tensor.copy_(state["tensors"][key])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for item, reference in zip(items, state["reference"], strict=True):
        item.reference = list(reference)
    return int(state["step"]), list(state["losses"])
