"""Serving HealthGPT three ways, side by side in one run, same weights, same machine:

  (a) official — what the official app does: one request at a time, batch 1, and the whole model
      rebuilt from disk whenever the task (comprehension <-> generation) changes;
  (b) sequential — one request at a time, batch 1, both plugins resident (no rebuilds);
  (c) ours — the continuous-batching engine, both plugins resident, rows of both tasks in one batch.

    .venv/bin/python bench/serving.py [--spec tiny] [--device cpu] [--out bench/results/serving-cpu.json]

Clients: C threads (C = 1, 8, 16, 32) sending requests back to back; the load is mixed: half
comprehension (a question about an image), half generation (an 8x8 grid of VQ tokens, constrained
decoding, the VQGAN decode excluded because the tiny profile has none). Reported per mode and
concurrency: throughput (requests/s, generated tokens/s), latency p50/p99 (queueing included) and time
to first token p50 where the mode streams ((a) does not: the official app answers whole).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from models.contract import GenerationRequest
from models.engine import BatchEngine
from models.healthgpt import HealthGPT
from models.limits import EngineLimits
from models.spec import ModelSpec
from models.tiny import resolve_spec

GRID = 64  # VQ tokens of a generation request here (8x8)
TEXT_TOKENS = 32


def workload(count: int) -> list[GenerationRequest]:
    image = Image.new("RGB", (64, 48), (120, 80, 40))
    requests = []
    for i in range(count):
        if i % 2 == 0:
            requests.append(
                GenerationRequest(f"What is shown in image {i}?", image, "comprehension", TEXT_TOKENS)
            )
        else:
            requests.append(
                GenerationRequest(
                    "Generate the corresponding MRI.", None, "generation", GRID + 2, constrain_vq=GRID
                )
            )
    return requests


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Official:
    """Sequential; a model holding only the task's plugin, rebuilt when the task changes."""

    streams = False

    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec, self.device = spec, device
        self.lock = threading.Lock()
        self.task: str | None = None
        self.model: HealthGPT | None = None
        self.rebuilds = 0

    def run(self, request: GenerationRequest) -> tuple[int, float | None]:
        with self.lock:
            if request.plugin != self.task:
                only = self.spec.model_copy(deep=True)
                only.plugins = {request.plugin: only.plugins[request.plugin]}
                self.model = HealthGPT(only, device=self.device)
                self.task = request.plugin
                self.rebuilds += 1
            (answer,) = self.model.generate([request])
            return len(answer.token_ids), None


class Sequential:
    """Sequential, batch 1, both plugins resident (the engine with one row: it streams)."""

    streams = True

    def __init__(self, model: HealthGPT) -> None:
        self.engine = BatchEngine(model, EngineLimits(max_batch=1, max_queue=1024, max_new_tokens=256))

    def run(self, request: GenerationRequest) -> tuple[int, float | None]:
        job = self.engine.submit(request)
        answer = job.result(600)
        return len(answer.token_ids), job.time_to_first_token_s


class Ours(Sequential):
    def __init__(self, model: HealthGPT, max_batch: int) -> None:
        self.engine = BatchEngine(
            model, EngineLimits(max_batch=max_batch, max_queue=1024, max_new_tokens=256)
        )


def measure(server, requests: list[GenerationRequest], concurrency: int) -> dict:
    pending = list(reversed(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0

    def client() -> None:
        nonlocal tokens
        while True:
            with lock:
                if not pending:
                    return
                request = pending.pop()
            sent = time.perf_counter()
            count, ttft = server.run(request)
            with lock:
                latencies.append(time.perf_counter() - sent)
                tokens += count
                if ttft is not None:
                    ttfts.append(ttft)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(requests) / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(_percentile(latencies, 0.5), 4),
        "latency_p99_s": round(_percentile(latencies, 0.99), 4),
        "ttft_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny", help="'tiny' or a model spec YAML (e.g. random M3 weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--concurrency", default="1,8,16,32")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--official-requests", type=int, default=16, help="(a) is slow: fewer requests")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving-cpu.json"))
    args = parser.parse_args()

    spec = resolve_spec(args.spec, Path("var/models").resolve(), 0)
    model = HealthGPT(spec, device=args.device)
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, list[dict]] = {"official": [], "sequential": [], "ours": []}
    official = Official(spec, args.device)
    sequential = Sequential(model)
    for concurrency in levels:
        count = max(8, concurrency * args.requests_per_client)
        requests = workload(count)
        measure(Ours(model, 32), workload(4), 4)  # warm-up
        before = official.rebuilds
        row = measure(official, workload(min(count, args.official_requests)), concurrency)
        results["official"].append({**row, "rebuilds": official.rebuilds - before})
        results["sequential"].append(measure(sequential, requests, concurrency))
        ours = Ours(model, max_batch=max(1, concurrency))
        results["ours"].append(measure(ours, requests, concurrency))
        ours.engine.close()
        for mode in results:
            row = results[mode][-1]
            print(
                f"C={concurrency:>2} {mode:<10} {row['requests_per_s']:>7.2f} req/s "
                f"{row['tokens_per_s']:>8.1f} tok/s "
                f"p50 {row['latency_p50_s']:.3f}s p99 {row['latency_p99_s']:.3f}s ttft {row['ttft_p50_s']}",
                flush=True,
            )
    sequential.engine.close()
    ratios = {
        str(row["concurrency"]): {
            "ours_vs_sequential": round(row["requests_per_s"] / seq["requests_per_s"], 2),
            "ours_vs_official": round(row["requests_per_s"] / off["requests_per_s"], 2),
        }
        for row, seq, off in zip(results["ours"], results["sequential"], results["official"], strict=True)
    }
    report = {
        "benchmark": "serving: official path vs sequential vs continuous batching (mixed load)",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "model": {"spec": spec.name, "dtype": spec.dtype},
        "workload": {"text_tokens": TEXT_TOKENS, "vq_tokens": GRID, "mix": "1:1 comprehension:generation"},
        "throughput_ratios": ratios,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
