"""H-LoRA layer cost at HealthGPT-M3 shapes: bare linear vs H-LoRA (one plugin) vs H-LoRA with a batch
split across two plugins (our per-row routing), side by side in one run.

    .venv/bin/python bench/hlora.py [--device cuda] [--dtype float16] [--out bench/results/hlora-cpu.json]

Decode = a batch of B single tokens (B = 1..32); prefill = one 600-token sequence. Times are medians
of repeated runs; ratios are to the bare linear of the same shape and load.
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

# (name, in, out) of the four adapted linears of one Phi-3-mini decoder layer; M3 comprehension r=64.
M3_LINEARS = [
    ("qkv_proj", 3072, 9216),
    ("o_proj", 3072, 3072),
    ("gate_up_proj", 3072, 16384),
    ("down_proj", 8192, 3072),
]
RANK, ALPHA, EXPERTS = 64, 128, 4


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
    torch.manual_seed(0)
    rows = []
    loads = [("decode", b, 1) for b in (1, 8, 32)] + [("prefill", 1, 600)]
    for name, fan_in, fan_out in M3_LINEARS:
        layer = HLoRALinear(nn.Linear(fan_in, fan_out, bias=False)).to(device=device, dtype=dtype)
        for plugin in ("comprehension", "generation"):
            nn.init.normal_(layer.add_plugin(plugin, RANK, ALPHA, EXPERTS).lora_B.weight, std=0.01)
        for phase, batch, tokens in loads:
            x = torch.randn(batch, tokens, fan_in, device=device, dtype=dtype)
            half = torch.arange(batch, device=device)
            variants = {
                "bare": None,
                "hlora": [("comprehension", None)],
                "hlora_mixed": [("comprehension", half[::2]), ("generation", half[1::2])]
                if batch > 1
                else None,
            }
            timings = {}
            for variant, routing in variants.items():
                if variant == "hlora_mixed" and routing is None:
                    continue
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
            row.update(
                {f"{k}_over_bare": round(v / timings["bare"], 3) for k, v in timings.items() if k != "bare"}
            )
            rows.append(row)
            print(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/hlora-cpu.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = run(device, getattr(torch, args.dtype), args.repeats)
    totals = {}
    for phase in ("decode", "prefill"):
        picked = [r for r in rows if r["phase"] == phase]
        bare = sum(r["bare_ms"] for r in picked)
        totals[phase] = {"hlora_over_bare": round(sum(r["hlora_ms"] for r in picked) / bare, 3)}
        mixed = [r for r in picked if "hlora_mixed_ms" in r]
        if mixed:
            totals[phase]["hlora_mixed_over_hlora"] = round(
                sum(r["hlora_mixed_ms"] for r in mixed) / sum(r["hlora_ms"] for r in mixed), 3
            )
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
        "rank": RANK,
        "alpha": ALPHA,
        "experts": EXPERTS,
        "repeats": args.repeats,
        "rows": rows,
        "summary": totals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
