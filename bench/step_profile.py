"""Where a decode step's time goes: decode at batch B, timed plainly (the serving engine, and the model's
reference loop) and counted under torch.profiler on the reference loop (operators dispatched, kernel
launches, host synchronisations, device kernel time). The profiler records the thread that starts it,
and the engine decodes on its own thread; the reference loop runs the same forward per layer.

    .venv/bin/python -m bench.step_profile --spec SPEC.yaml [--device cuda] [--batch 1,8] [--tokens 24]
        [--out FILE.json]

Per step = (a run of T new tokens) - (a run of 1 new token, the prefill alone), over the T - 1 steps
of the reference loop, or over the engine's extra passes (with the rows a pass carried: rows submitted
together may join in more than one group), so the prompt's prefill is not counted. ``device_busy`` is
the device's kernel time over the reference loop's plain wall time: well under 1 means the step waits
on the host (Python and operator dispatch), not on the GPU, which is what CUDA graphs or fewer, larger
operators would remove. Half the rows are comprehension, half generation, text prompts (no image),
greedy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.serving import _sync, limits, machine, model_shape
from models.contract import GenerationRequest
from models.engine import BatchEngine
from models.healthgpt import HealthGPT
from models.tiny import resolve_spec

# Calls that make the host wait for the device (an asynchronous copy does not, unless a synchronize
# follows it, which is then counted).
SYNCS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"}


def _requests(batch: int, tokens: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(f"Describe finding {i} in detail.", None, "comprehension", tokens)
        if i % 2 == 0
        else GenerationRequest(
            "Generate the corresponding MRI.", None, "generation", tokens, constrain_vq=tokens
        )
        for i in range(batch)
    ]


def _run(engine: BatchEngine, batch: int, tokens: int) -> tuple[float, int, int]:
    """Wall seconds for ``batch`` rows of ``tokens`` new tokens each, submitted together, with the
    engine's passes (steps that emitted tokens) and the rows those passes carried."""
    before = engine.figures()
    _sync(str(engine.model.device))
    started = time.perf_counter()
    jobs = [engine.submit(request) for request in _requests(batch, tokens)]
    for job in jobs:
        answer = job.result(3600)
        if len(answer.token_ids) != tokens:
            raise RuntimeError(f"expected {tokens} tokens, got {len(answer.token_ids)}")
    _sync(str(engine.model.device))
    wall = time.perf_counter() - started
    after = engine.figures()
    return wall, after.forward_passes - before.forward_passes, after.batch_rows - before.batch_rows


def _reference(model: HealthGPT, batch: int, tokens: int) -> float:
    """Wall seconds of the model's reference loop (``HealthGPT.generate``) on the same requests."""
    _sync(str(model.device))
    started = time.perf_counter()
    model.generate(_requests(batch, tokens))
    _sync(str(model.device))
    return time.perf_counter() - started


def _counts(model: HealthGPT, batch: int, tokens: int, cuda: bool) -> dict[str, float]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        _reference(model, batch, tokens)
    totals = {"operators": 0.0, "kernel_launches": 0.0, "host_syncs": 0.0, "device_kernel_ms": 0.0}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            totals["operators"] += event.count
        elif event.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"):
            totals["kernel_launches"] += event.count
        elif event.key in SYNCS:
            totals["host_syncs"] += event.count
    if cuda:
        # Kernels are the events that ran on the device; their self time is the device's busy time.
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                totals["device_kernel_ms"] += event.self_device_time_total / 1000
    return totals


def profile_batch(model: HealthGPT, batch: int, tokens: int) -> dict:
    cuda = model.device.type == "cuda"
    engine = BatchEngine(model, limits(batch, max_queue=2 * batch))
    try:
        _run(engine, batch, 4)  # warm-up: kernels, allocator, cache blocks
        # Rows submitted together may still join in more than one group (the loop can start on the
        # first before the last is queued): per pass, with the rows a pass carried on average.
        (wall, passes, rows), (wall_1, passes_1, rows_1) = _run(engine, batch, tokens), _run(engine, batch, 1)
        engine_step_s = (wall - wall_1) / max(1, passes - passes_1)
        engine_rows = (rows - rows_1) / max(1, passes - passes_1)
    finally:
        engine.close()
    _reference(model, batch, 4)
    reference_steps = (_reference(model, batch, tokens) - _reference(model, batch, 1)) / (tokens - 1)
    full, prefill = _counts(model, batch, tokens, cuda), _counts(model, batch, 1, cuda)
    per_step = {key: round((full[key] - prefill[key]) / (tokens - 1), 2) for key in full}
    row = {
        "batch": batch,
        "tokens": tokens,
        "engine_step_ms": round(engine_step_s * 1000, 2),
        "engine_rows_per_step": round(engine_rows, 2),
        "reference_step_ms": round(reference_steps * 1000, 2),
        **per_step,
    }
    if cuda:
        row["device_busy"] = round(per_step["device_kernel_ms"] / (reference_steps * 1000), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny", help="'tiny' or a model spec YAML")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("bench/results/step-profile-cpu.json"))
    args = parser.parse_args()
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (one prefill token plus decode steps)")

    spec = resolve_spec(args.spec, Path("var/models").resolve(), 0)
    model = HealthGPT(spec, device=args.device)
    report = {
        "benchmark": "decode step: wall time, operators, kernel launches, host syncs, device kernel time",
        "machine": machine(args.device),
        "model": {**model_shape(model), "attention": model.attention},
        "rows": [],
    }
    for batch in (int(b) for b in args.batch.split(",")):
        row = profile_batch(model, batch, args.tokens)
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
