"""Fixed-shape decode steps recorded as CUDA graphs against the ordinary step: same answers, step time.

    python -m bench.decode_graphs --spec /tmp/m3/healthgpt.yaml --device cuda \
        --out bench/results/decode-graphs-gpu.json

The same requests (text at batch 1, an image's first VQ tokens at batch 1, four text rows of one plugin)
go through the engine with ``decode_graphs`` on and off. Reported per request: whether the token ids agree,
where they first part (half precision can round a near-tie the other way when attention spans the
cache's whole capacity instead of its live window), the largest log-probability difference over the
common prefix, and the decode step's median time both ways; and whether recording worked (``failed``
names why not). On a CPU the fixed step runs eagerly (no graphs): a dry run of the script, not a figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from bench.serving import _sync, limits, machine, model_shape
from models.contract import GenerationRequest
from models.engine import BatchEngine
from models.healthgpt import HealthGPT
from models.tiny import resolve_spec


def _cases(model: HealthGPT, tokens: int) -> dict[str, list[GenerationRequest]]:
    picture = Image.new("RGB", (256, 256), (90, 120, 160))
    cells = model.image_token_count("generation")
    vq = min(tokens, cells)
    describe = GenerationRequest("Describe the image in detail.", picture, "comprehension", tokens)
    # The first VQ tokens of a picture, constrained as a whole picture's are.
    draw = GenerationRequest("Reconstruct the image.", picture, "generation", vq, constrain_vq=cells)
    return {
        "text_batch_1": [describe],
        "image_batch_1": [draw],
        "text_batch_4": [
            GenerationRequest(f"Question {i}: what does the image show?", picture, "comprehension", tokens)
            for i in range(4)
        ],
    }


def _run(
    model: HealthGPT, requests: list[GenerationRequest], graphs: bool
) -> tuple[list, float, dict | None]:
    chosen = limits(len(requests), max_queue=8).model_copy(update={"decode_graphs": graphs})
    engine = BatchEngine(model, chosen)
    try:
        for job in [engine.submit(request) for request in requests]:  # warm-up; with graphs, the recording
            job.result(3600)
        _sync(str(model.device))
        jobs = [engine.submit(request) for request in requests]
        answers = [job.result(3600) for job in jobs]
        _sync(str(model.device))
        steps = [
            (answer.seconds - (job.time_to_first_token_s or 0.0)) / (len(answer.token_ids) - 1)
            for job, answer in zip(jobs, answers, strict=True)
            if len(answer.token_ids) > 1
        ]
        return answers, statistics.median(steps), engine.decode_graphs
    finally:
        engine.close()


def _compare(ordinary: list, fixed: list) -> list[dict]:
    rows = []
    for a, b in zip(ordinary, fixed, strict=True):
        common = next(
            (i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)) if x != y),
            min(len(a.token_ids), len(b.token_ids)),
        )
        rows.append(
            {
                "tokens": len(a.token_ids),
                "same_tokens": a.token_ids == b.token_ids,
                "first_difference_at": None if a.token_ids == b.token_ids else common,
                "max_logprob_difference": max(
                    (abs(x - y) for x, y in zip(a.logprobs[:common], b.logprobs[:common], strict=True)),
                    default=0.0,
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny", help="'tiny' or a model spec YAML (e.g. random M3 weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode-graphs-cpu.json"))
    args = parser.parse_args()
    spec = resolve_spec(args.spec, Path("var/models").resolve(), 0)
    model = HealthGPT(spec, device=args.device)
    report: dict = {
        "benchmark": "decode steps: fixed shapes recorded as CUDA graphs vs the ordinary step",
        "machine": machine(args.device),
        "model": model_shape(model),
        "tokens_per_request": args.tokens,
        "cases": {},
    }
    for name, requests in _cases(model, args.tokens).items():
        started = time.perf_counter()
        ordinary, ordinary_step, _ = _run(model, requests, graphs=False)
        fixed, fixed_step, figures = _run(model, requests, graphs=True)
        report["cases"][name] = {
            "rows": len(requests),
            "ordinary_step_ms": round(1000 * ordinary_step, 3),
            "fixed_step_ms": round(1000 * fixed_step, 3),
            "speedup": round(ordinary_step / fixed_step, 2),
            "decode_graphs": figures,
            "answers": _compare(ordinary, fixed),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(name, json.dumps(report["cases"][name]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
