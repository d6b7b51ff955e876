"""Image generation end to end: the VQ tokens of one picture (constrained greedy decode of the VQGAN's grid,
1,024 tokens for the released 32 x 32 grid) and the VQGAN decode, timed apart, at batch 1, through the
batching engine as the service runs it (tools.healthgpt.InProcessHealthGPT.generate_image).

    .venv/bin/python -m bench.image_gen --spec SPEC.yaml [--device cuda] [--runs 3] [--out FILE.json]

Run it on random weights at the released shapes (``healthagent model random --preset m3``): the picture
is noise, the arithmetic is the real one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from bench.serving import _sync, add_decode_graphs_option, limits, machine, model_shape, set_decode_graphs
from models.contract import GenerationRequest
from models.engine import BatchEngine
from models.healthgpt import HealthGPT
from models.tiny import resolve_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny", help="'tiny' or a model spec YAML")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/image-gen-cpu.json"))
    add_decode_graphs_option(parser)
    args = parser.parse_args()
    set_decode_graphs(args.decode_graphs)

    spec = resolve_spec(args.spec, Path("var/models").resolve(), 0)
    model = HealthGPT(spec, device=args.device)
    cells = model.image_token_count("generation")
    source = Image.new("RGB", (256, 256), (90, 120, 160))
    request = GenerationRequest("Reconstruct the image.", source, "generation", cells + 2, constrain_vq=cells)
    # Warm-up: a short decode (kernels, allocator) and, below, one untimed VQGAN decode; the timed runs
    # are whole pictures.
    engine = BatchEngine(model, limits(1, max_queue=2))
    engine.generate(GenerationRequest("Reconstruct the image.", source, "generation", 8), 600)

    def write(runs: list[dict]) -> dict:
        """The report so far, rewritten after each run: a run cut short by a time limit keeps the
        finished ones."""
        report = {
            "benchmark": "image generation: VQ tokens (constrained greedy, batch 1) + VQGAN decode",
            "machine": machine(args.device),
            "model": {**model_shape(model), "vq_tokens": cells},
            "median": {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]},
            "runs": runs,
            "runs_requested": args.runs,
            "decode_graphs": engine.decode_graphs,
        }
        report["median"]["ms_per_vq_token"] = round(1000 * report["median"]["tokens_s"] / cells, 2)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return report

    runs: list[dict] = []
    for index in range(1, args.runs + 1):
        _sync(args.device)
        started = time.perf_counter()
        answer = engine.generate(request, 3600)
        _sync(args.device)
        tokens_s = time.perf_counter() - started
        if index == 1:
            model.image_from_tokens(answer.token_ids)
            _sync(args.device)
        started_decode = time.perf_counter()
        picture, indices = model.image_from_tokens(answer.token_ids)
        _sync(args.device)
        decode_s = time.perf_counter() - started_decode
        runs.append({"tokens_s": tokens_s, "decode_s": decode_s, "total_s": tokens_s + decode_s})
        print(
            f"run {index}: {len(indices)} VQ tokens in {tokens_s:.2f} s "
            f"({1000 * tokens_s / len(indices):.1f} ms each), "
            f"picture {picture.size} decoded in {decode_s:.2f} s",
            flush=True,
        )
        report = write(runs)
    engine.close()
    print(json.dumps(report["median"]))


if __name__ == "__main__":
    main()
