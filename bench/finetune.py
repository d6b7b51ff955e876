"""Feedback refresh on CPU: (1) training throughput per stage preset and method on the tiny model, each
configuration repeated, with its spread; (2) time from an admin's promote to the first answer that carries
the new adapter version, through the in-process app (the HTTP routes, the fine-tune service, the engine's
in-place swap), under a background load whose failures are counted.

    .venv/bin/python -m bench.finetune [--repeats 3] [--steps 8] [--swaps 6] [--out FILE.json]

Throughput: ``samples/s`` is rows trained per second (epochs × rows / seconds), ``tokens/s`` the embedded
tokens forwarded per second (image patches included; a DPO row forwards chosen and rejected, a KTO row its
answer and a mismatched one), both over the whole ``train()`` call, preparation included (CLIP features
and the reference log-probs of DPO/KTO under the starting weights). One warm-up run per configuration is
not counted.

Real widths: ``--preset m3 --layers 2`` (``l14``, ``xl32``) trains a model of the released model's true
widths, vocabulary and plugin ranks with random weights (``healthagent model random``; ``--layers`` cuts
depth only, so a CPU can run it) and measures throughput only, into ``finetune-<preset>-cpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from models.tiny import build_tiny
from models.training import Row, TrainConfig, preset, save_trained, train

PLUGIN = "comprehension"
QUESTION = "Describe the findings in this CT image."
FINDINGS = ["No focal consolidation.", "A large effusion.", "Severe pneumothorax.", "Normal study."]
# (stage, method): the paper's three stages with supervised rows; stage 3 (a feedback refresh) also with
# preference pairs (DPO) and ratings (KTO-style), each beside the supervised rows as a job trains them.
CONFIGS = [(1, "sft"), (2, "sft"), (3, "sft"), (3, "dpo"), (3, "kto")]
ROWS_PER_CONFIG = 16


def _picture(folder: Path, index: int) -> Path:
    path = folder / f"p{index}.png"
    if not path.exists():
        colour = ((60 * index) % 256, (100 + 37 * index) % 256, (200 - 23 * index) % 256)
        Image.new("RGB", (32, 32), colour).save(path)
    return path


def rows_for(method: str, folder: Path) -> list[Row]:
    """Half supervised rows, half rows of the method (as a job mixes corrections with pairs or ratings)."""
    rows = []
    for index in range(ROWS_PER_CONFIG):
        image = _picture(folder, index % 8)
        answer = FINDINGS[index % len(FINDINGS)]
        if method == "sft" or index % 2 == 0:
            rows.append(Row("sft", QUESTION, answer, image=image))
        elif method == "dpo":
            rows.append(Row("pair", QUESTION, answer, rejected="Patient reports headache.", image=image))
        else:
            rows.append(Row("kto", QUESTION, answer, desirable=index % 4 == 1, image=image))
    return rows


def _spread(values: list[float]) -> dict[str, float]:
    median = statistics.median(values)
    return {
        "median": round(median, 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "spread_pct": round(100 * (max(values) - min(values)) / median, 1) if median else 0.0,
    }


def throughput(spec: ModelSpec, folder: Path, repeats: int, steps: int) -> list[dict[str, Any]]:
    results = []
    for stage, method in CONFIGS:
        rows = rows_for(method, folder)
        hyper = dataclasses.replace(
            preset(stage, spec.plugins[PLUGIN].task, spec.template),
            batch_size=4,
            epochs=max(1, steps * 4 // len(rows)),
            warmup_ratio=0.0,
        )
        config = TrainConfig(PLUGIN, stage=stage, hyper=hyper, micro_batch_size=4, seed=0)
        runs = []
        for attempt in range(repeats + 1):
            model = HealthGPT(spec.model_copy(deep=True))  # every run starts from the same weights
            result = train(model, rows, config)
            if attempt == 0:
                continue  # warm-up: allocator, kernels, tokenizer caches
            trained = result.examples * hyper.epochs
            runs.append(
                {
                    "seconds": result.seconds,
                    "samples_per_second": trained / result.seconds,
                    "tokens_per_second": result.tokens / result.seconds,
                    "steps": result.steps,
                    "loss_first": result.loss_first,
                    "loss_last": result.loss_last,
                }
            )
        results.append(
            {
                "stage": stage,
                "method": method,
                "trains": sorted(hyper.trains),
                "rows": len(rows),
                "epochs": hyper.epochs,
                "batch_size": hyper.batch_size,
                "steps": runs[0]["steps"],
                "samples_per_second": _spread([r["samples_per_second"] for r in runs]),
                "tokens_per_second": _spread([r["tokens_per_second"] for r in runs]),
                "seconds": _spread([r["seconds"] for r in runs]),
                "runs": [{k: round(v, 4) for k, v in r.items()} for r in runs],
            }
        )
        line = results[-1]
        print(
            f"stage {stage} {method:<3}: {line['samples_per_second']['median']:>7.1f} samples/s "
            f"{line['tokens_per_second']['median']:>9.1f} tokens/s (spread "
            f"{line['tokens_per_second']['spread_pct']}%)",
            flush=True,
        )
    return results


def _candidate(spec: ModelSpec, folder: Path) -> Path:
    """A trained adapter to promote (a few steps of stage 3: its answers differ from the base's)."""
    model = HealthGPT(spec.model_copy(deep=True))
    hyper = dataclasses.replace(preset(3, "comprehension"), epochs=2, batch_size=4, warmup_ratio=0.0)
    result = train(model, rows_for("sft", folder), TrainConfig(PLUGIN, hyper=hyper))
    return save_trained(model, result, folder / "candidate", "bench-candidate", parent=spec.adapter_version)


class _Load:
    """Patients' chat turns in a background thread: every failure is counted."""

    def __init__(self, client, token: str) -> None:
        self.client, self.token = client, token
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            response = self.client.post(
                "/v1/chat", json={"message": "I have a mild cough."}, headers=_auth(self.token)
            )
            self.sent += 1
            self.failed += response.status_code != 200

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(60)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def promote_to_answer(spec: ModelSpec, folder: Path, swaps: int) -> dict[str, Any]:
    """Promote and roll back ``swaps`` times through the HTTP routes; each time, the seconds until the
    call returned and until the first chat answer that carries the new version."""
    from fastapi.testclient import TestClient

    from memory.db import transaction
    from memory.records import Records
    from memory.schema import AdapterStatus, Role
    from memory.users import new_token, set_bootstrap_token
    from models.adapters import WEIGHTS_FILE, file_sha256
    from serving.api.app import create_app
    from serving.services import build_services, prepare_database
    from serving.settings import Settings
    from tools.healthgpt import InProcessHealthGPT

    adapter = _candidate(spec, folder)
    settings = Settings(
        data_dir=folder / "var",
        max_new_tokens=6,
        rate_limit={"burst": 1_000_000, "per_minute": 60_000_000},
        finetune={"executor": "thread"},
    )
    prepare_database(settings).dispose()
    services = build_services(settings, InProcessHealthGPT(HealthGPT(spec.model_copy(deep=True))))
    client = TestClient(create_app(services), raise_server_exceptions=False)
    client.__enter__()
    try:
        admin = new_token()
        with transaction(services.sessions) as session:
            records = Records(session, set_bootstrap_token(session, admin))
            services.finetunes._ensure_champion(records, PLUGIN, services.model.info().adapter_versions)
            user, patient = records.create_user("bench-patient", Role.patient)
            records.create_patient("Bench Patient", user_id=user.id)
            weights = adapter / WEIGHTS_FILE
            records.register_adapter(
                PLUGIN,
                "bench-candidate",
                [str(weights)],
                path=str(adapter),
                sha256=file_sha256(weights),
                status=AdapterStatus.candidate,
                gate_passed=True,
            )
        base = services.model.info().adapter_versions[PLUGIN]
        # A first turn loads what every turn shares (the triage embedder, the agent graph): not counted.
        client.post("/v1/chat", json={"message": "Hello"}, headers=_auth(patient))
        timings: list[dict[str, float | str]] = []
        with _Load(client, patient) as load:
            for index in range(swaps):
                target = "bench-candidate" if index % 2 == 0 else base
                path = (
                    "/v1/admin/adapters/bench-candidate/promote"
                    if target != base
                    else f"/v1/admin/adapters/{PLUGIN}/rollback"
                )
                started = time.perf_counter()
                response = client.post(path, json={"reason": "bench"}, headers=_auth(admin))
                returned = time.perf_counter() - started
                assert response.status_code == 200, response.text
                while True:
                    answer = client.post("/v1/chat", json={"message": "Hello"}, headers=_auth(patient))
                    if (answer.json().get("provenance") or {}).get("adapter_version") == target:
                        break
                first = time.perf_counter() - started
                timings.append(
                    {
                        "action": "promote" if target != base else "rollback",
                        "call_s": returned,
                        "first_s": first,
                    }
                )
                print(
                    f"{timings[-1]['action']:<8}: call {returned:.3f} s, first answer {first:.3f} s",
                    flush=True,
                )
    finally:
        client.__exit__(None, None, None)
        services.close()
    return {
        "path": "in-process app: POST …/promote | …/rollback, then POST /v1/chat until the version shows",
        "swaps": swaps,
        "call_seconds": _spread([t["call_s"] for t in timings]),
        "first_answer_seconds": _spread([t["first_s"] for t in timings]),
        "background_requests": load.sent,
        "background_failed": load.failed,
        "runs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()} for t in timings],
    }


def model_for(args: argparse.Namespace, folder: Path) -> tuple[ModelSpec, str]:
    """The tiny model, or random weights at a released model's widths (``--preset``)."""
    if args.preset is None:
        return ModelSpec.from_yaml(build_tiny(folder / "tiny-seed0", seed=0)), "tiny (models.tiny, seed 0)"
    from models.random_weights import build_random

    path = build_random(
        args.preset,
        folder / args.preset,
        layers=args.layers,
        vision_layers=args.vision_layers,
        with_vqgan=False,
    )
    depth = f"{args.layers} decoder layers" if args.layers else "released depth"
    return ModelSpec.from_yaml(path), f"{args.preset} widths, random weights, {depth}"


def conditions(spec: ModelSpec, model: HealthGPT, described: str) -> dict[str, Any]:
    config = model.llm.config
    plugin = spec.plugins[PLUGIN]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        # The cores may be shared with other work: the load when the run started says how busy they were.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "device": "cpu",
        "precision": "fp32",
        "model": {
            "spec": described,
            "architecture": config.model_type,
            "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers,
            "vocab": config.vocab_size,
            "parameters": sum(p.numel() for p in model.llm.parameters()),
            "plugin": {"name": PLUGIN, "r": plugin.r, "alpha": plugin.alpha, "experts": plugin.experts},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="Timed runs per configuration (after a warm-up)."
    )
    parser.add_argument("--steps", type=int, default=8, help="About this many optimizer steps per run.")
    parser.add_argument("--swaps", type=int, default=6, help="Promotions and rollbacks, alternating.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    parser.add_argument("--preset", choices=["m3", "l14", "xl32"], help="Real widths (random weights).")
    parser.add_argument("--layers", type=int, default=None, help="With --preset: decoder layers to keep.")
    parser.add_argument("--vision-layers", type=int, default=None, help="With --preset: CLIP layers.")
    parser.add_argument("--out", type=Path, default=None, help="Default: bench/results/finetune-cpu.json.")
    args = parser.parse_args()
    out = args.out or Path(f"bench/results/finetune-{args.preset + '-' if args.preset else ''}cpu.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as temporary:
        folder = Path(temporary)
        spec, described = model_for(args, folder)
        report = {
            "benchmark": "bench.finetune",
            "conditions": conditions(spec, HealthGPT(spec.model_copy(deep=True)), described),
            "training": throughput(spec, folder, args.repeats, args.steps),
        }
        if args.preset is None:  # the swap is timed on the tiny app only (a real-width one loads for minutes)
            report["promote_to_first_answer"] = promote_to_answer(spec, folder, args.swaps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
