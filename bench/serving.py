"""Serving HealthGPT three ways, side by side in one run, same weights, same prompts, same machine:

  (a) official — what the official app does for each request: the model rebuilt from disk holding only
      the task's plugin (rebuild time counted), then transformers' own ``generate()`` at batch 1, greedy,
      the same number of new tokens as the others (``min_new_tokens`` = ``max_new_tokens``);
  (b) sequential — our engine with one row: one request at a time, both plugins resident;
  (c) ours — the continuous-batching engine, both plugins resident, rows of both tasks in one batch.

    .venv/bin/python -m bench.serving [--spec tiny|SPEC.yaml] [--device cpu] [--out FILE.json]
        [--attention auto|eager|sdpa] [--prefill-chunk TOKENS, 0 = whole prompts]
        [--prefill-budget TOKENS, 0 = none] [--sequential-requests N, 0 = as many as (c)]

Clients: C threads (C = 1, 8, 16, 32 by default) sending requests back to back; the load is mixed: half
comprehension (a question about an image), half generation (an 8x8 grid of VQ tokens; the VQGAN decode is
excluded). Reported per mode and concurrency: throughput (requests/s, generated tokens/s), latency
p50/p99 (queueing included), time to first token p50 where the mode streams ((a) answers whole), and the
peak resident memory (CPU) or GPU memory so far. Official requests are serialised as in the official
app, so fewer of them are timed (``--official-requests``): its throughput does not depend on C; nor
does (b)'s, which may be capped too (``--sequential-requests``) where time is short (a lent GPU).

A roofline figure comes with it: at batch 1 a decode step reads every weight once, so the step can take
no less than (bytes of the weights a step reads) / (memory bandwidth). The same run measures the
machine's copy bandwidth and reports the batch-1 decode step of (b) as a fraction of that bound.

A ceiling comes with it too: batching saves weight reads, not arithmetic, so a prompt's prefill costs
the same in every mode (compute-bound wherever the prompt is long: a CPU, or an image prompt anywhere).
Even an engine whose decode steps were free would need the mix's mean batch-1 prefill time per request;
the official path's mean time per request over that is the most (c) ÷ (a) this load can reach here.

The machine may be shared: every row records the 1-minute load average at its end, so figures taken
under load can be read as such (ratios within one run share the conditions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import replace
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
    """For each request: rebuild the model from disk with only the task's plugin, then transformers'
    ``generate()`` at batch 1 on the Hugging Face model (the H-LoRA routed to that plugin, its fusion
    tables in place), as the official app runs. Serialised: the app serves one request at a time."""

    streams = False

    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec, self.device = spec, device
        self.lock = threading.Lock()
        self.rebuilds = 0
        self.rebuild_s = 0.0

    def run(self, request: GenerationRequest) -> tuple[int, float | None]:
        with self.lock:
            started = time.perf_counter()
            only = self.spec.model_copy(deep=True)
            only.plugins = {request.plugin: only.plugins[request.plugin]}
            # The official code's nn.Linear products (MKL's sgemm on a CPU), not our oneDNN path.
            model = HealthGPT(only, device=self.device, onednn=False)
            self.rebuilds += 1
            self.rebuild_s += time.perf_counter() - started
            embeds = model.embed_prompt(request.question, request.image, request.plugin)[None]
            with model.as_single_task(request.plugin) as llm, torch.no_grad():
                out = llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
                    max_new_tokens=request.max_new_tokens,
                    min_new_tokens=request.max_new_tokens,
                    do_sample=False,
                    pad_token_id=model.eos_token_ids[0],
                )
            del model
            return int(out.shape[1]), None


def limits(max_batch: int, max_queue: int = 1024) -> EngineLimits:
    """The engine's limits here; ``PREFILL_CHUNK`` is set from ``--prefill-chunk``."""
    # Queueing counts against a request's deadline: at real widths on a CPU, C requests served one at a
    # time wait far longer than serving's 300 s, so the benchmark allows an hour.
    return EngineLimits(
        max_batch=max_batch,
        max_queue=max_queue,
        max_new_tokens=256,
        prefill_chunk_tokens=PREFILL_CHUNK,
        prefill_budget_tokens=PREFILL_BUDGET,
        request_timeout_s=3600.0,
        decode_graphs=DECODE_GRAPHS,
    )


PREFILL_CHUNK: int | None = EngineLimits().prefill_chunk_tokens
PREFILL_BUDGET: int | None = EngineLimits().prefill_budget_tokens
DECODE_GRAPHS: bool | None = EngineLimits().decode_graphs
GRAPH_CHOICES = {"auto": None, "on": True, "off": False}


def add_decode_graphs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--decode-graphs",
        choices=sorted(GRAPH_CHOICES),
        default="auto",
        help="fixed-shape decode steps recorded as CUDA graphs (auto: on a CUDA device only)",
    )


def set_decode_graphs(choice: str) -> None:
    global DECODE_GRAPHS
    DECODE_GRAPHS = GRAPH_CHOICES[choice]


class Sequential:
    """Sequential, batch 1, both plugins resident (the engine with one row: it streams)."""

    streams = True

    def __init__(self, model: HealthGPT) -> None:
        self.engine = BatchEngine(model, limits(1))

    @property
    def device(self) -> str:
        return str(self.engine.model.device)

    def run(self, request: GenerationRequest) -> tuple[int, float | None]:
        job = self.engine.submit(request)
        answer = job.result(600)
        return len(answer.token_ids), job.time_to_first_token_s


class Ours(Sequential):
    def __init__(self, model: HealthGPT, max_batch: int) -> None:
        self.engine = BatchEngine(model, limits(max_batch))


def machine(device: str) -> dict:
    """Where a figure was taken: platform, processor, torch and its threads, the device."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
    }


def model_shape(model: HealthGPT) -> dict:
    """The shape a figure was taken at: spec, dtype, width and depth."""
    return {
        "spec": model.spec.name,
        "dtype": model.spec.dtype,
        "hidden": model.llm.config.hidden_size,
        "layers": model.llm.config.num_hidden_layers,
    }


def peak_memory_mib(device: str) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory so far, in MiB."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, mib: int = 512, repeats: int = 7) -> float:
    """Bytes/s moved by the best of ``repeats`` copies of a ``mib`` buffer (read + write counted), far
    larger than any cache: what a weight-streaming decode step can hope for on this machine."""
    source = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        target.copy_(source)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * source.element_size() / best


def weight_bytes_per_step(model: HealthGPT, plugin: str) -> int:
    """Bytes a batch-1 decode step reads: every decoder weight, the output head and the plugin's
    H-LoRA and router (the input embedding is one row per step; the vision tower and projector run once
    per prompt)."""
    total = 0
    for name, param in model.llm.named_parameters():
        if "embed_tokens" not in name:
            total += param.numel() * param.element_size()
    groups = model.plugin_parameter_groups(plugin)
    for group in ("hlora", "router"):
        total += sum(t.numel() * t.element_size() for t in groups[group].values())
    return total


def roofline(model: HealthGPT, device: str, tokens: int = 48) -> dict:
    """Batch-1 decode step of the engine (b) against the bandwidth bound, measured in this run; where the
    engine records its steps as CUDA graphs, the ordinary step's figure is measured beside it."""
    bandwidth = copy_bandwidth(device)
    figure = _roofline_of(model, bandwidth, tokens, DECODE_GRAPHS)
    if figure["decode_graphs"] is not None:
        figure["without_decode_graphs"] = _roofline_of(model, bandwidth, tokens, False)
    return figure


def _roofline_of(model: HealthGPT, bandwidth: float, tokens: int, graphs: bool | None) -> dict:
    engine = BatchEngine(model, limits(1, max_queue=4).model_copy(update={"decode_graphs": graphs}))
    image = Image.new("RGB", (64, 48), (120, 80, 40))
    steps = []
    try:
        for _ in range(3):
            job = engine.submit(
                GenerationRequest("Describe the image in detail.", image, "comprehension", tokens)
            )
            answer = job.result(3600)
            decode_s = answer.seconds - (job.time_to_first_token_s or 0.0)
            if len(answer.token_ids) > 1:
                steps.append(decode_s / (len(answer.token_ids) - 1))
    finally:
        engine.close()
    step = statistics.median(steps)
    weights = weight_bytes_per_step(model, "comprehension")
    bound = weights / bandwidth
    return {
        "decode_graphs": engine.decode_graphs,
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "weight_bytes_per_step": weights,
        "bound_step_ms": round(bound * 1000, 3),
        "decode_step_ms": round(step * 1000, 3),
        "fraction_of_bound": round(bound / step, 3),
        "tokens_per_request": tokens,
    }


def prefill_seconds(model: HealthGPT, rounds: int = 3) -> dict[str, float]:
    """Median batch-1 prefill time (vision tower, prompt, first token) of each kind of request in the
    mix, one request at a time through the engine."""
    engine = BatchEngine(model, limits(1, max_queue=4))
    kinds = {request.plugin: request for request in workload(2)}
    seconds: dict[str, list[float]] = {plugin: [] for plugin in kinds}
    try:
        for _ in range(rounds):
            for plugin, request in kinds.items():
                # One new token: the first comes from the prefill's own logits.
                job = engine.submit(replace(request, max_new_tokens=1, constrain_vq=None))
                job.result(3600)
                seconds[plugin].append(job.time_to_first_token_s or 0.0)
    finally:
        engine.close()
    return {plugin: round(statistics.median(values), 3) for plugin, values in seconds.items()}


def ceilings(results: dict[str, list[dict]], prefill: dict[str, float]) -> dict:
    """(a)'s mean seconds per request over the mix's mean prefill seconds per request: the (c) ÷ (a)
    an engine with free decode steps would reach here (see the module's docstring)."""
    official = sum(row["seconds"] for row in results["official"]) / sum(
        row["requests"] for row in results["official"]
    )
    prefill_mean = statistics.fmean(prefill.values())
    return {
        "official_s_per_request": round(official, 3),
        "prefill_s_per_request": prefill,
        "ours_vs_official_ceiling": round(official / prefill_mean, 2),
    }


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
        "peak_memory_mib": peak_memory_mib(server.device),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    global PREFILL_CHUNK, PREFILL_BUDGET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny", help="'tiny' or a model spec YAML (e.g. random M3 weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--concurrency", default="1,8,16,32")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--official-requests", type=int, default=16, help="(a) is slow: fewer requests")
    parser.add_argument(
        "--sequential-requests",
        type=int,
        default=0,
        help="cap on (b)'s requests per level (one row: its throughput does not depend on C); 0: no cap",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving-cpu.json"))
    parser.add_argument("--attention", choices=["auto", "eager", "sdpa"], default="auto")
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=EngineLimits().prefill_chunk_tokens,
        help="prefill chunk in tokens; 0: whole prompts",
    )
    parser.add_argument(
        "--prefill-budget",
        type=int,
        default=EngineLimits().prefill_budget_tokens,
        help="tokens one prefill chunk may carry across rows; 0: no budget",
    )
    add_decode_graphs_option(parser)
    args = parser.parse_args()
    PREFILL_CHUNK, PREFILL_BUDGET = args.prefill_chunk or None, args.prefill_budget or None
    set_decode_graphs(args.decode_graphs)
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    spec = resolve_spec(args.spec, Path("var/models").resolve(), 0)
    model = HealthGPT(spec, device=args.device, attention=args.attention)
    shape = {
        **model_shape(model),
        "vocab": len(model.tokenizer),
        "ranks": {name: plugin.r for name, plugin in spec.plugins.items()},
        "demo_weights": spec.demo_weights,
        "attention": model.attention,
    }
    print(f"model {shape} on {args.device}", flush=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, list[dict]] = {"official": [], "sequential": [], "ours": []}
    report: dict = {
        "benchmark": "serving: official path (rebuild + transformers generate, batch 1) vs sequential vs "
        "continuous batching (mixed load)",
        "machine": machine(args.device),
        "model": shape,
        "engine": {
            "kv_cache": "SlotCache (preallocated slots)",
            "prefill_chunk_tokens": PREFILL_CHUNK,
            "prefill_budget_tokens": PREFILL_BUDGET,
            "linear_products": "oneDNN" if model.onednn else "F.linear",
            "decode_graphs": args.decode_graphs,
        },
        "workload": {"text_tokens": TEXT_TOKENS, "vq_tokens": GRID, "mix": "1:1 comprehension:generation"},
        "roofline": None,
        "ceiling": None,
        "results": results,
    }

    def write(partial: bool, **parts: dict) -> None:
        """The report as it stands, rewritten after each level: a run cut short (a lease's time limit)
        still leaves the levels it finished, marked ``partial``."""
        for key, value in parts.items():
            report[key] = value
            print(f"{key} {value}", flush=True)
        report["partial"] = partial
        report["load_avg_1m_5m_15m"] = {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]}
        report["throughput_ratios"] = {
            str(row["concurrency"]): {
                "ours_vs_sequential": round(row["requests_per_s"] / seq["requests_per_s"], 2),
                "ours_vs_official": round(row["requests_per_s"] / off["requests_per_s"], 2),
            }
            for row, seq, off in zip(results["ours"], results["sequential"], results["official"], strict=True)
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    official = Official(spec, args.device)
    sequential = Sequential(model)
    measure(Ours(model, 32), workload(4), 4)  # warm-up: kernels, allocator, the first rebuild's caches
    official.run(workload(1)[0])
    for concurrency in levels:
        count = max(8, concurrency * args.requests_per_client)
        requests = workload(count)
        before, before_s = official.rebuilds, official.rebuild_s
        row = measure(official, workload(min(count, args.official_requests)), concurrency)
        rebuilds = official.rebuilds - before
        row.update(
            rebuilds=rebuilds, rebuild_s_mean=round((official.rebuild_s - before_s) / max(1, rebuilds), 3)
        )
        results["official"].append(row)
        sequential_count = min(count, args.sequential_requests) if args.sequential_requests else count
        results["sequential"].append(measure(sequential, workload(sequential_count), concurrency))
        ours = Ours(model, max_batch=max(1, concurrency))
        row = measure(ours, requests, concurrency)
        results["ours"].append({**row, "decode_graphs": ours.engine.decode_graphs})
        ours.engine.close()
        for mode in results:
            row = results[mode][-1]
            print(
                f"C={concurrency:>2} {mode:<10} {row['requests_per_s']:>7.2f} req/s "
                f"{row['tokens_per_s']:>8.1f} tok/s "
                f"p50 {row['latency_p50_s']:.3f}s p99 {row['latency_p99_s']:.3f}s ttft {row['ttft_p50_s']} "
                f"peak {row['peak_memory_mib']} MiB",
                flush=True,
            )
        write(partial=True)
    sequential.engine.close()
    write(partial=True, roofline=roofline(model, args.device))
    write(partial=False, ceiling=ceilings(results, prefill_seconds(model)))
    print(json.dumps(report["throughput_ratios"], indent=2))


if __name__ == "__main__":
    main()
