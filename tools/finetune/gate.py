"""The evaluation gate: champion and challenger — two adapter states of one plugin, resident side by side
over one base model — scored on the same items by one harness. Three checks, all of which must pass:

(a) held-out feedback — the mean, over held-out corrections, of each corrected text's mean token
    log-probability (teacher-forced, with its study's picture): the challenger must beat the champion by
    ``heldout_margin`` nats/token (default 0.02: above the run-to-run noise of a few dozen rows, below
    the gain a useful refresh brings). Each correction counts once whatever its length.
(b) regression — multiple-choice VQA items of a frozen set (:mod:`tools.finetune.vqa`) through the model's
    ``score`` path, each choice by its mean token log-probability: the challenger's accuracy may not drop
    by more than ``regression_tolerance`` (default 0.02, i.e. two points; on the 8-item synthetic sample set
    that means no item may flip to wrong).
(c) image reliance — the answers' mean token log-probability with the real picture against a blank (black)
    and a noise picture of the same size; reliance is the mean absolute difference, in nats/token. Models
    that ignore the image are a known failure of medical VLMs: the challenger's reliance must reach
    ``reliance_min`` (default 0.01 nats/token) and may not fall more than ``reliance_tolerance`` (default
    20 %) below the champion's. Items: held-out corrections with a picture and regression items with one
    (their correct choice as the answer).

A check with no items fails: a gate that saw nothing says nothing. The report is a pydantic model, stored
as JSON with the job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from models.adapters import with_adapter
from models.healthgpt import HealthGPT
from models.training.data import Row
from tools.finetune.vqa import RegressionSet, VqaItem, load_regression_set

FORMAT = "healthagent-gate/1"
CHAMPION_SLOT = "__gate_champion"
CHALLENGER_SLOT = "__gate_challenger"
_EPSILON = 1e-9  # figures equal up to float noise compare as equal


class GateConfig(BaseModel):
    heldout_margin: float = Field(
        default=0.02, description="nats/token the challenger must gain on held-out corrections"
    )
    regression_tolerance: float = Field(
        default=0.02, ge=0, le=1, description="the most the regression accuracy may drop (a fraction)"
    )
    reliance_min: float = Field(
        default=0.01, ge=0, description="nats/token of |real − blank/noise| below which the image is ignored"
    )
    reliance_tolerance: float = Field(
        default=0.2, ge=0, le=1, description="the share of the champion's reliance the challenger may lose"
    )
    batch_size: int = Field(default=8, ge=1, description="sequences per teacher-forced forward")
    noise_seed: int = 0


class GateCheck(BaseModel):
    name: Literal["heldout_logprob", "regression_vqa", "image_reliance"]
    passed: bool
    items: int
    champion: float | None = Field(description="The champion's figure (see rule for its unit)")
    challenger: float | None
    delta: float | None = Field(description="challenger − champion")
    rule: str
    reason: str = Field(default="", description="Why it failed; empty when it passed")
    figures: dict[str, float | int] = Field(default_factory=dict)


class GateReport(BaseModel):
    format: Literal["healthagent-gate/1"] = FORMAT
    plugin: str
    base_model: str
    champion_version: str | None
    challenger_version: str | None
    passed: bool
    checks: list[GateCheck]
    config: GateConfig
    regression_set: dict[str, str | int | bool]
    heldout_source: str = Field(default="", description="The held-out rows' dataset digest, when known")
    seconds: float


@dataclass(frozen=True)
class _Example:
    question: str
    answer: str
    image: str | None  # a name in the harness's picture table


class _Harness:
    """Pictures loaded once, CLIP features computed once per picture and layer, shared by both sides."""

    def __init__(self, model: HealthGPT, config: GateConfig) -> None:
        self.model = model
        self.config = config
        self.pictures: dict[str, Image.Image] = {}
        self.patches: dict[tuple[str, int], torch.Tensor] = {}

    def picture(self, path: Path) -> str:
        name = str(path)
        if name not in self.pictures:
            with Image.open(path) as opened:
                self.pictures[name] = opened.convert("RGB")
        return name

    def counterfactuals(self, name: str, index: int) -> tuple[str, str]:
        """A black picture and a noise picture of the real one's size."""
        size = self.pictures[name].size
        blank, noise = f"blank:{size}", f"noise:{index}:{name}"
        self.pictures.setdefault(blank, Image.new("RGB", size, (0, 0, 0)))
        if noise not in self.pictures:
            rng = np.random.default_rng([self.config.noise_seed, index])
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            self.pictures[noise] = Image.fromarray(pixels, "RGB")
        return blank, noise

    def _features(self, name: str, layer: int) -> torch.Tensor:
        if (name, layer) not in self.patches:
            pixels = self.model.pixel_values(self.pictures[name])
            self.patches[(name, layer)] = self.model.vision_features(pixels, [layer])[layer]
        return self.patches[(name, layer)]

    @torch.no_grad()
    def mean_logprobs(self, slot: str, examples: Sequence[_Example]) -> list[float]:
        """Each example's answer's mean token log-probability under ``slot``, teacher-forced, batched."""
        layer = self.model.spec.plugins[slot].vision_layer
        values: list[float] = []
        for start in range(0, len(examples), self.config.batch_size):
            rows = []
            for example in examples[start : start + self.config.batch_size]:
                has_image = example.image is not None
                ids, length = self.model.example_ids(example.question, example.answer, has_image, slot)
                patches = self._features(example.image, layer) if example.image is not None else None
                rows.append((ids, length, patches))
            logprobs, real = self.model.token_logprobs(rows, slot)
            values.extend((logprobs.sum(-1) / real.sum(-1)).tolist())
        return values

    @torch.no_grad()
    def choose(self, slot: str, item: VqaItem) -> tuple[bool, float]:
        """Whether ``slot`` picks the right choice through ``score``, and the correct choice's lead (mean
        log-prob) over the best wrong one."""
        image = self.pictures[self.picture(item.image)] if item.image is not None else None
        means = []
        for choice in item.choices:
            scored = self.model.score(item.question, choice, image, plugin=slot)
            means.append(scored.sum_logprob / len(scored.logprobs))
        best = max(range(len(means)), key=means.__getitem__)
        lead = means[item.answer] - max(m for i, m in enumerate(means) if i != item.answer)
        return best == item.answer, lead


@contextmanager
def _slot(
    model: HealthGPT, plugin: str, adapter_dir: Path | None, name: str
) -> Iterator[tuple[str, str | None]]:
    """The plugin key that serves one side, and its version: the resident plugin when ``adapter_dir`` is
    None, else the adapter loaded beside it (checked against this base model by ``with_adapter``) and
    removed afterwards."""
    if adapter_dir is None:
        yield plugin, model.spec.adapter_version
        return
    spec = with_adapter(model.spec, plugin, adapter_dir)
    model.add_plugin(name, spec.plugins[plugin])
    try:
        yield name, spec.adapter_version
    finally:
        model.remove_plugin(name)


def heldout_examples(rows: Sequence[Row]) -> list[tuple[str, str, Path | None]]:
    """The corrected texts among held-out rows: supervised answers and pairs' chosen texts, once each."""
    seen: dict[tuple[str, str, Path | None], None] = {}
    for row in rows:
        if row.kind in ("sft", "pair"):
            seen.setdefault((row.question, row.answer, row.image), None)
    return list(seen)


def run_gate(
    model: HealthGPT,
    plugin: str,
    challenger: Path,
    *,
    heldout: Sequence[Row],
    champion: Path | None = None,
    regression: RegressionSet | None = None,
    config: GateConfig | None = None,
    heldout_source: str = "",
) -> GateReport:
    """Score ``challenger`` (an adapter folder) against ``champion`` (an adapter folder, or None for the
    model's resident ``plugin``) on the same items. ``regression`` defaults to the shipped synthetic set.
    The model is used for scoring only; the adapters loaded for the run are removed afterwards."""
    started = time.perf_counter()
    config = config or GateConfig()
    regression = regression or load_regression_set()
    if plugin not in model.spec.plugins:
        raise ValueError(f"unknown plugin {plugin!r}; this model has {sorted(model.spec.plugins)}")
    harness = _Harness(model, config)
    corrections = [
        _Example(q, a, harness.picture(image) if image is not None else None)
        for q, a, image in heldout_examples(heldout)
    ]
    reliance_items = [e for e in corrections if e.image is not None] + [
        _Example(item.question, item.choices[item.answer], harness.picture(item.image))
        for item in regression.items
        if item.image is not None
    ]
    with (
        _slot(model, plugin, champion, CHAMPION_SLOT) as (champion_key, champion_version),
        _slot(model, plugin, challenger, CHALLENGER_SLOT) as (challenger_key, challenger_version),
    ):
        checks = [
            _heldout_check(harness, champion_key, challenger_key, corrections),
            _regression_check(harness, champion_key, challenger_key, regression.items),
            _reliance_check(harness, champion_key, challenger_key, reliance_items),
        ]
    return GateReport(
        plugin=plugin,
        base_model=model.spec.name,
        champion_version=champion_version,
        challenger_version=challenger_version,
        passed=all(check.passed for check in checks),
        checks=checks,
        config=config,
        regression_set={
            "name": regression.manifest.name,
            "digest": regression.manifest.digest,
            "items": len(regression.items),
            "synthetic": regression.manifest.synthetic,
        },
        heldout_source=heldout_source,
        seconds=round(time.perf_counter() - started, 3),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _empty(name: str, rule: str, what: str) -> GateCheck:
    return GateCheck(
        name=name,
        passed=False,
        items=0,
        champion=None,
        challenger=None,
        delta=None,
        rule=rule,
        reason=f"no {what} to evaluate: the gate cannot vouch for the challenger",
    )


def _heldout_check(harness: _Harness, champion: str, challenger: str, examples: list[_Example]) -> GateCheck:
    margin = harness.config.heldout_margin
    rule = f"challenger − champion ≥ {margin} (mean token log-prob of held-out corrections, nats/token)"
    if not examples:
        return _empty("heldout_logprob", rule, "held-out corrections")
    ours, theirs = harness.mean_logprobs(challenger, examples), harness.mean_logprobs(champion, examples)
    delta = _mean(ours) - _mean(theirs)
    passed = delta >= margin - _EPSILON
    wins = sum(a > b for a, b in zip(ours, theirs, strict=True))
    short = f"the challenger gains {delta:.4f} nats/token, less than the margin {margin}"
    return GateCheck(
        name="heldout_logprob",
        passed=passed,
        items=len(examples),
        champion=_mean(theirs),
        challenger=_mean(ours),
        delta=delta,
        rule=rule,
        reason="" if passed else short,
        figures={"win_rate": wins / len(examples)},
    )


def _regression_check(harness: _Harness, champion: str, challenger: str, items: list[VqaItem]) -> GateCheck:
    tolerance = harness.config.regression_tolerance
    rule = f"challenger accuracy ≥ champion accuracy − {tolerance} (multiple-choice VQA through score)"
    if not items:
        return _empty("regression_vqa", rule, "regression items")
    theirs = [harness.choose(champion, item) for item in items]
    ours = [harness.choose(challenger, item) for item in items]
    their_accuracy = sum(right for right, _ in theirs) / len(items)
    our_accuracy = sum(right for right, _ in ours) / len(items)
    delta = our_accuracy - their_accuracy
    passed = delta >= -tolerance - _EPSILON
    pairs = [(was, now) for (was, _), (now, _) in zip(theirs, ours, strict=True)]
    return GateCheck(
        name="regression_vqa",
        passed=passed,
        items=len(items),
        champion=their_accuracy,
        challenger=our_accuracy,
        delta=delta,
        rule=rule,
        reason="" if passed else f"accuracy drops by {-delta:.3f}, more than the tolerance {tolerance}",
        figures={
            "champion_mean_lead": _mean([lead for _, lead in theirs]),
            "challenger_mean_lead": _mean([lead for _, lead in ours]),
            "flipped_to_wrong": sum(was and not now for was, now in pairs),
            "flipped_to_right": sum(now and not was for was, now in pairs),
        },
    )


def _reliance(harness: _Harness, slot: str, examples: list[_Example]) -> tuple[float, float]:
    """(mean |real − counterfactual|, mean real − counterfactual) over blank and noise pictures."""
    real = harness.mean_logprobs(slot, examples)
    swapped = []
    for index, example in enumerate(examples):
        assert example.image is not None  # only items with a picture are passed in
        blank, noise = harness.counterfactuals(example.image, index)
        swapped += [
            _Example(example.question, example.answer, blank),
            _Example(example.question, example.answer, noise),
        ]
    other = harness.mean_logprobs(slot, swapped)
    gaps = [r - o for i, r in enumerate(real) for o in other[2 * i : 2 * i + 2]]
    return _mean([abs(g) for g in gaps]), _mean(gaps)


def _reliance_check(harness: _Harness, champion: str, challenger: str, examples: list[_Example]) -> GateCheck:
    floor, tolerance = harness.config.reliance_min, harness.config.reliance_tolerance
    rule = (
        f"challenger reliance ≥ {floor} and ≥ (1 − {tolerance}) × champion reliance "
        "(mean |log-prob with the real picture − with a blank / noise one|, nats/token)"
    )
    if not examples:
        return _empty("image_reliance", rule, "items with a picture")
    theirs, their_signed = _reliance(harness, champion, examples)
    ours, our_signed = _reliance(harness, challenger, examples)
    reasons = []
    if ours < floor - _EPSILON:
        reasons.append(f"the challenger's answers barely depend on the image ({ours:.4f} < {floor})")
    if ours < (1 - tolerance) * theirs - _EPSILON:
        reasons.append(
            f"the challenger relies on the image less than the champion ({ours:.4f} vs {theirs:.4f})"
        )
    return GateCheck(
        name="image_reliance",
        passed=not reasons,
        items=len(examples),
        champion=theirs,
        challenger=ours,
        delta=ours - theirs,
        rule=rule,
        reason="; ".join(reasons),
        figures={"champion_real_advantage": their_signed, "challenger_real_advantage": our_signed},
    )
