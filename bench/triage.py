"""Red-flag triage figures: a frozen evaluation set (first-sight figures, aggregates only) and the dev sets.

    .venv/bin/python -m bench.triage [--frozen v2]   # score them, write bench/results/triage-eval.json
    .venv/bin/python -m bench.triage --dev-misses   # also list the DEV set's misses and false alarms
    .venv/bin/python -m bench.triage --sweep    # the classifier's raise threshold on DEV (not the frozen set)

A frozen set (``bench/data/triage-frozen-v*.jsonl``, v2 by default) is checked against its recorded sha256
before it is scored, and its messages are never printed: only counts, rates and 95% Wilson intervals, per
language, age group and level. Figures: emergency recall, false-alarm rate (a non-emergency called an
emergency), category accuracy on the caught emergencies, exact level accuracy, each for the rules alone and
with the learned second opinion, and the time per message on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
# v1 was scored three times; v2 (frozen before the next knowledge-base round) is the set for first sight.
FROZEN_SETS = {"v1": DATA / "triage-frozen-v1.jsonl", "v2": DATA / "triage-frozen-v2.jsonl"}
FROZEN = FROZEN_SETS["v2"]
DEV = DATA / "triage-dev.jsonl"
# Later dev sets: realistic multi-sentence messages with levels, each written by an author who saw neither
# the rules nor the frozen sets (tuned on).
LEVELLED_DEV_SETS = ("triage-dev2.jsonl", "triage-dev3.jsonl", "triage-dev4.jsonl")
RESULTS = ROOT / "bench" / "results" / "triage-eval.json"


class FrozenSetChanged(RuntimeError):
    pass


def frozen_rows(path: Path = FROZEN) -> list[dict[str, Any]]:
    data = path.read_bytes()
    recorded = path.with_suffix(".jsonl.sha256").read_text().split()[0]
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise FrozenSetChanged(f"{path.name} has sha256 {actual}, the recorded one is {recorded}")
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def dev_rows() -> list[dict[str, Any]]:
    rows = []
    for line in DEV.read_text("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append({"text": row["text"], "lang": row["lang"], "emergency": row["emergency"],
                         "category": row.get("category")})  # fmt: skip
    return rows


def wilson(successes: int, n: int, z: float = 1.959964) -> dict[str, Any]:
    """The proportion with its 95% Wilson score interval (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return {"value": None, "n": 0, "ci95": None}
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {
        "value": round(p, 4),
        "k": successes,
        "n": n,
        "ci95": [round(centre - half, 4), round(centre + half, 4)],
    }


def figures(rows: list[dict[str, Any]], results: list[Any]) -> dict[str, Any]:
    emergencies = [(row, r) for row, r in zip(rows, results, strict=True) if row["level"] == "emergency"]
    others = [(row, r) for row, r in zip(rows, results, strict=True) if row["level"] != "emergency"]
    caught = [(row, r) for row, r in emergencies if r.red_flag]
    return {
        "n": len(rows),
        "emergency_recall": wilson(len(caught), len(emergencies)),
        "false_alarm_rate": wilson(sum(r.red_flag for _, r in others), len(others)),
        "category_accuracy_on_caught": wilson(
            sum(r.category == row["category"] for row, r in caught), len(caught)
        ),
        "level_accuracy": wilson(
            sum(r.level == row["level"] for row, r in zip(rows, results, strict=True)), len(rows)
        ),
        "level_within_one": wilson(
            sum(abs(_rank(r.level) - _rank(row["level"])) <= 1 for row, r in zip(rows, results, strict=True)),
            len(rows),
        ),
        "urgent_or_higher_recall_on_urgent": wilson(
            sum(
                _rank(r.level) >= 2 for row, r in zip(rows, results, strict=True) if row["level"] == "urgent"
            ),
            sum(row["level"] == "urgent" for row in rows),
        ),
    }


def _rank(level: str) -> int:
    return ("self_care", "routine", "urgent", "emergency").index(level)


def breakdown(rows: list[dict[str, Any]], results: list[Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"all": figures(rows, results)}
    for key in ("lang", "age_group"):
        for value in sorted({row[key] for row in rows}):
            picked = [(row, r) for row, r in zip(rows, results, strict=True) if row[key] == value]
            report[f"{key}={value}"] = figures([p[0] for p in picked], [p[1] for p in picked])
    negatives = [(row, r) for row, r in zip(rows, results, strict=True) if row.get("kind") == "hard_negative"]
    report["hard_negatives_false_alarm"] = wilson(sum(r.red_flag for _, r in negatives), len(negatives))
    confusion: dict[str, dict[str, int]] = {}
    for row, r in zip(rows, results, strict=True):
        confusion.setdefault(row["level"], {}).setdefault(r.level, 0)
        confusion[row["level"]][r.level] += 1
    report["level_confusion (expected -> got)"] = confusion
    return report


def timed(function: Callable[[str], Any], texts: list[str]) -> tuple[list[Any], dict[str, float]]:
    results, times = [], []
    for text in texts:
        start = time.perf_counter()
        results.append(function(text))
        times.append((time.perf_counter() - start) * 1000)
    ordered = sorted(times)
    return results, {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "max_ms": round(ordered[-1], 2),
    }


def dev_figures(rows: list[dict[str, Any]], results: list[Any]) -> dict[str, Any]:
    em = [(row, r) for row, r in zip(rows, results, strict=True) if row["emergency"]]
    other = [(row, r) for row, r in zip(rows, results, strict=True) if not row["emergency"]]
    out = {
        "n": len(rows),
        "emergency_recall": wilson(sum(r.red_flag for _, r in em), len(em)),
        "false_alarm_rate": wilson(sum(r.red_flag for _, r in other), len(other)),
    }
    for lang in ("en", "zh"):
        sub_em = [(row, r) for row, r in em if row["lang"] == lang]
        sub_other = [(row, r) for row, r in other if row["lang"] == lang]
        out[f"lang={lang}"] = {
            "emergency_recall": wilson(sum(r.red_flag for _, r in sub_em), len(sub_em)),
            "false_alarm_rate": wilson(sum(r.red_flag for _, r in sub_other), len(sub_other)),
        }
    return out


# The tuning rule for the classifier's raise threshold, fixed before looking: on DEV, the lowest threshold
# at which the second opinion adds at most this many false alarms (as a rate) over the rules alone.
MAX_ADDED_FALSE_ALARMS = 0.03


def sweep(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """On DEV: for each language, what raising at each threshold adds in recall and costs in false alarms,
    and the threshold the tuning rule picks."""
    from tools import triage
    from tools.triage import classifier

    out: dict[str, Any] = {}
    for lang in ("en", "zh"):
        subset = [row for row in rows if row["lang"] == lang]
        rules = [triage.triage_rules(row["text"]) for row in subset]
        opinions = [classifier.opinion(row["text"]) for row in subset]
        table = []
        for threshold in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.01):
            flags = [
                r.red_flag or (o is not None and o[0] >= threshold)
                for r, o in zip(rules, opinions, strict=True)
            ]
            em = [f for f, row in zip(flags, subset, strict=True) if row["emergency"]]
            other = [f for f, row in zip(flags, subset, strict=True) if not row["emergency"]]
            table.append({"threshold": threshold, "recall": round(sum(em) / max(1, len(em)), 4),
                          "false_alarm_rate": round(sum(other) / max(1, len(other)), 4)})  # fmt: skip
        rules_far = table[-1]["false_alarm_rate"]  # 1.01: the classifier never raises
        allowed = [r for r in table if r["false_alarm_rate"] - rules_far <= MAX_ADDED_FALSE_ALARMS]
        out[lang] = {"table": table, "picked": min(allowed, key=lambda r: r["threshold"])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dev-misses", action="store_true", help="list the dev set's misses and false alarms"
    )
    parser.add_argument("--sweep", action="store_true", help="the classifier threshold table on dev")
    parser.add_argument("--frozen", choices=sorted(FROZEN_SETS), default="v2", help="which frozen set")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    frozen_path = FROZEN_SETS[args.frozen]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from tools import embeddings, triage
    from tools.triage import classifier, knowledge_base

    dev = dev_rows()
    if args.sweep:
        print(json.dumps(sweep(dev), indent=1))
        return 0
    kb = knowledge_base()
    frozen = frozen_rows(frozen_path)
    texts = [row["text"] for row in frozen]
    # Warm-up (pattern compilation, the spaCy pipeline, the embedding model, the classifier's training)
    # outside the timed loop, on dev text only.
    for row in dev[:20]:
        triage.triage(row["text"])
    rules, rules_time = timed(triage.triage_rules, texts)
    combined, combined_time = timed(triage.triage, texts)
    # In the agent the message's embedding is computed once per turn for intent and the screens together
    # (tools/specialists.py); with it already cached, the screen's own cost is:
    embeddings.prefetch(texts)
    _, shared_time = timed(triage.triage, texts)
    dev_results = [triage.triage(row["text"]) for row in dev]
    levelled: dict[str, Any] = {}
    for name in LEVELLED_DEV_SETS:
        if (DATA / name).is_file():
            lines = (DATA / name).read_text("utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
            levelled[name.removeprefix("triage-").removesuffix(".jsonl")] = breakdown(
                rows, [triage.triage(row["text"]) for row in rows]
            )

    emergency_conditions = sum(1 for c in kb.conditions if c.lines["emergency"])
    report = {
        "benchmark": "red-flag triage on the frozen evaluation set (first sight) and the dev set",
        "frozen_set": {
            "file": str(frozen_path.relative_to(ROOT)),
            "sha256": frozen_path.with_suffix(".jsonl.sha256").read_text().split()[0],
            "n": len(frozen),
        },
        "knowledge_base": {
            "findings": len(kb.findings),
            "conditions": len(kb.conditions),
            "conditions_with_emergency_lines": emergency_conditions,
        },
        "classifier": {"raise_at": classifier.RAISE_AT, "training_rows": len(classifier.training_set())},
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "conditions": {
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "concurrency": 1,
            "timing": "one message at a time in one process, after a warm-up on dev messages; the embedding "
            "model is all-MiniLM-L6-v2 (384 wide, 6 layers)",
        },
        "latency_per_message": {
            "rules": rules_time,
            "rules_and_classifier": combined_time,
            "rules_and_classifier_embedding_shared_with_intent": shared_time,
        },
        "frozen": {
            "rules_and_classifier": breakdown(frozen, combined),
            "rules_only": breakdown(frozen, rules),
        },
        "classifier_added": {
            "emergencies_caught": sum(
                c.red_flag and not r.red_flag
                for c, r, row in zip(combined, rules, frozen, strict=True)
                if row["level"] == "emergency"
            ),
            "false_alarms_added": sum(
                c.red_flag and not r.red_flag
                for c, r, row in zip(combined, rules, frozen, strict=True)
                if row["level"] != "emergency"
            ),
        },
        "dev": dev_figures(dev, dev_results),
        **levelled,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    def line(name: str, f: dict[str, Any]) -> str:
        def show(key: str) -> str:
            v = f[key]
            return f"{v['value']} [{v['ci95'][0]}, {v['ci95'][1]}]" if v["value"] is not None else "-"

        return (
            f"{name:<24} n={f['n']:<4} recall {show('emergency_recall')}"
            f"  false alarms {show('false_alarm_rate')}"
            f"  category {show('category_accuracy_on_caught')}  level {show('level_accuracy')}"
        )

    for mode in ("rules_and_classifier", "rules_only"):
        print(f"frozen set, {mode}:")
        for key, value in report["frozen"][mode].items():
            if isinstance(value, dict) and "n" in value and "emergency_recall" in value:
                print("  " + line(key, value))
    print("classifier added:", report["classifier_added"])
    print("latency:", report["latency_per_message"])
    print("dev:", json.dumps(report["dev"]))
    for name in levelled:
        print("  " + line(f"{name} (levels)", report[name]["all"]))
    if args.dev_misses:
        for row, r in zip(dev, dev_results, strict=True):
            if row["emergency"] and not r.red_flag:
                print(f"  dev missed [{row['category']}]: {row['text']}  -> {r.level} {r.condition}")
            if not row["emergency"] and r.red_flag:
                print(f"  dev false alarm: {row['text']}  -> {r.condition}: {r.reasons[0][:120]}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
