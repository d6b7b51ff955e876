"""H-LoRA layer cost at HealthGPT-M3 shapes and the released ranks (comprehension r=64, generation r=256,
from models.random_weights.PRESETS): bare linear vs H-LoRA of each plugin vs a batch split across both
plugins (our per-row routing), side by side in one run.

    .venv/bin/python -m bench.hlora [--device cuda] [--dtype bfloat16] [--out bench/results/hlora-cpu.json]

Decode = a batch of B single tokens (B = 1, 8, 32); prefill = one 600-token sequence. Each timing is the
median of ``--repeats`` calls; the whole measurement is repeated ``--rounds`` times and each ratio is
reported as its median with the min-max over rounds, so noise is not read as a result.

The JSON also gives each plugin's *work floor*: the adapted linears' weights plus the plugin's A, B and
router, over the bare weights. H-LoRA cannot be merged into W (its gate depends on the input), so a
batch-1 decode step, bound by the bytes it reads, cannot cost less than that ratio, and a compute-bound
step does that ratio's extra multiply-adds: no implementation of this formulation beats the floor at the
weights' own precision.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from models.hlora import HLoRALinear
from models.kernels import onednn_for
from models.random_weights import PRESETS

# (name, in, out) of the four adapted linears of one Phi-3-mini decoder layer.
M3_LINEARS = [
    ("qkv_proj", 3072, 9216),
    ("o_proj", 3072, 3072),
    ("gate_up_proj", 3072, 16384),
    ("down_proj", 8192, 3072),
]
PLUGINS = {name: (p.r, p.alpha, p.experts) for name, p in PRESETS["m3"].plugins.items()}


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run(device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    """One round: every linear, every load, every variant; times in ms and ratios to bare."""
    torch.manual_seed(0)
    rows = []
    loads = [("decode", b, 1) for b in (1, 8, 32)] + [("prefill", 1, 600)]
    for name, fan_in, fan_out in M3_LINEARS:
        layer = HLoRALinear(nn.Linear(fan_in, fan_out, bias=False)).to(device=device, dtype=dtype)
        layer.onednn = onednn_for(device, dtype)  # the products the served model uses here
        for plugin, (rank, alpha, experts) in PLUGINS.items():
            nn.init.normal_(layer.add_plugin(plugin, rank, alpha, experts).lora_B.weight, std=0.01)
        for phase, batch, tokens in loads:
            x = torch.randn(batch, tokens, fan_in, device=device, dtype=dtype)
            rows_idx = torch.arange(batch, device=device)
            variants: dict[str, object] = {
                "bare": None,
                "comprehension": [("comprehension", None)],
                "generation": [("generation", None)],
            }
            if batch > 1:
                variants["mixed"] = [("comprehension", rows_idx[::2]), ("generation", rows_idx[1::2])]
            timings = {}
            for variant, routing in variants.items():
                layer.routing = routing
                with torch.no_grad():
                    timings[variant] = _median_seconds(lambda layer=layer, x=x: layer(x), device, repeats)
            layer.routing = None
            row = {
                "linear": name,
                "in": fan_in,
                "out": fan_out,
                "phase": phase,
                "batch": batch,
                "tokens": tokens,
            }
            row.update({f"{k}_ms": round(v * 1e3, 4) for k, v in timings.items()})
            rows.append(row)
    return rows


def work_floor(rank: int, experts: int) -> float:
    """(bare + A + B + router parameters) / bare parameters over the four adapted linears of a layer."""
    bare = sum(fan_in * fan_out for _, fan_in, fan_out in M3_LINEARS)
    extra = sum(rank * (fan_in + fan_out) + experts * fan_in for _, fan_in, fan_out in M3_LINEARS)
    return (bare + extra) / bare


def summarise(rounds: list[list[dict]]) -> dict:
    """Per phase and batch: each variant's time over bare (all four linears summed), as the median and
    min-max over rounds, and each variant's summed time (median over rounds, ms)."""
    summary: dict[str, dict] = {}
    for phase, batch in sorted({(r["phase"], r["batch"]) for r in rounds[0]}):
        ratios: dict[str, list[float]] = {}
        times: dict[str, list[float]] = {}
        for rows in rounds:
            picked = [r for r in rows if r["phase"] == phase and r["batch"] == batch]
            for variant in ("bare", "comprehension", "generation", "mixed"):
                if all(f"{variant}_ms" in r for r in picked):
                    times.setdefault(variant, []).append(sum(r[f"{variant}_ms"] for r in picked))
            for variant in ("comprehension", "generation", "mixed"):
                if variant in times:
                    ratios.setdefault(variant, []).append(times[variant][-1] / times["bare"][-1])
        summary[f"{phase}_b{batch}"] = {
            f"{variant}_over_bare": {
                "median": round(statistics.median(values), 3),
                "min": round(min(values), 3),
                "max": round(max(values), 3),
            }
            for variant, values in ratios.items()
        } | {"ms": {variant: round(statistics.median(values), 2) for variant, values in times.items()}}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5, help="calls per timing (median)")
    parser.add_argument("--rounds", type=int, default=3, help="whole measurements (spread)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/hlora-cpu.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = []
    for index in range(args.rounds):
        rounds.append(run(device, getattr(torch, args.dtype), args.repeats))
        print(f"round {index + 1}/{args.rounds}: {json.dumps(summarise(rounds[-1:]))}", flush=True)
    totals = summarise(rounds)
    result = {
        "benchmark": "hlora-layer",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        },
        "dtype": args.dtype,
        "plugins": {name: {"r": r, "alpha": a, "experts": e} for name, (r, a, e) in PLUGINS.items()},
        "work_floor_over_bare": {name: round(work_floor(r, e), 4) for name, (r, _, e) in PLUGINS.items()},
        "repeats": args.repeats,
        "rounds": rounds,
        "summary": totals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
