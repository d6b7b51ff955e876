"""The red-flag evaluation set and its metrics.

``data/triage_eval.jsonl`` holds labelled messages in English and Chinese (typos, lower case, hard
negatives: negated, past, family history, hypothetical, mild). Emergencies carry the expected category.

How it was built, so the figures can be read honestly: it grew in rounds. Round 1 was written with the
rules (dev). Each later round was written fresh as a test split, scored once (its "first sight"
figures are kept in :data:`FIRST_SIGHT`), then the rules were improved on its misses and it joined
dev. Round 6 is the current ``test`` split: nothing was tuned on it. The similarity thresholds are
picked on dev alone by :func:`sweep` (each channel on its own, at most 2.5% false alarms).

    .venv/bin/python -m tests.tools.triage_eval   # prints the figures, writes bench/results/triage-eval.json
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tools import triage

DATA = Path(__file__).with_name("data") / "triage_eval.jsonl"
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "triage-eval.json"


# Each test round's figures the first time it was scored, before any change made because of it.
FIRST_SIGHT: list[dict[str, Any]] = [
    {"round": 2, "n": 116, "recall": 0.9231, "false_alarm_rate": 0.0392},
    {"round": 3, "n": 127, "recall": 0.8611, "false_alarm_rate": 0.0909},
    {"round": 4, "n": 125, "recall": 0.8493, "false_alarm_rate": 0.0577},
    {"round": 5, "n": 127, "recall": 0.8649, "false_alarm_rate": 0.0189},
    {
        "round": 6,
        "n": 128,
        "recall": 0.9459,
        "false_alarm_rate": 0.0370,
        "note": "the current test split, scored with the thresholds then picked on rounds 1-4; the same rule "
        "re-applied on rounds 1-5 (dev now) moved them",
    },
]


class Example(BaseModel):
    split: str
    text: str
    emergency: bool
    category: str | None
    lang: str
    round: int


def load(split: str | None = None) -> list[Example]:
    examples = [Example.model_validate_json(line) for line in DATA.read_text("utf-8").splitlines() if line]
    return [e for e in examples if split is None or e.split == split]


def metrics(examples: list[Example], results: list[triage.TriageResult]) -> dict[str, Any]:
    emergencies = [(e, r) for e, r in zip(examples, results, strict=True) if e.emergency]
    benign = [(e, r) for e, r in zip(examples, results, strict=True) if not e.emergency]
    caught = [(e, r) for e, r in emergencies if r.red_flag]
    return {
        "n": len(examples),
        "emergencies": len(emergencies),
        "non_emergencies": len(benign),
        "recall": round(len(caught) / len(emergencies), 4) if emergencies else None,
        "false_alarm_rate": round(sum(r.red_flag for _, r in benign) / len(benign), 4) if benign else None,
        "category_accuracy_on_caught": (
            round(sum(r.category == e.category for e, r in caught) / len(caught), 4) if caught else None
        ),
        "missed": [e.text for e, r in emergencies if not r.red_flag],
        "false_alarms": [f"{e.text}  [{r.category}]" for e, r in benign if r.red_flag],
    }


RULES_ONLY = triage.Thresholds(embedding=2.0, ngram=2.0)  # similarity can never pass
MAX_SIMILARITY_FAR = (
    0.025  # tuning rule: the similarity signal alone may raise at most 2.5% false alarms on dev
)


def _similarity_only(analysis: triage.Analysis) -> triage.Analysis:
    return dataclasses.replace(analysis, findings=())


@functools.lru_cache(maxsize=4)
def analyse_split(split: str) -> tuple[triage.Analysis, ...]:
    """The analyses of a split, computed once per process (evaluate and sweep both need them)."""
    return tuple(triage.analyse_many([e.text for e in load(split)]))


def evaluate(split: str, thresholds: triage.Thresholds | None = None) -> dict[str, Any]:
    examples = load(split)
    analyses = analyse_split(split)
    results = [triage.decide(a, thresholds) for a in analyses]
    report = metrics(examples, results)
    for lang in ("en", "zh"):
        subset = [(e, r) for e, r in zip(examples, results, strict=True) if e.lang == lang]
        if subset:
            part = metrics([e for e, _ in subset], [r for _, r in subset])
            report[lang] = {k: part[k] for k in ("n", "recall", "false_alarm_rate")}
    for name, decided in (
        ("rules_only", [triage.decide(a, RULES_ONLY) for a in analyses]),
        ("similarity_only", [triage.decide(_similarity_only(a), thresholds) for a in analyses]),
    ):
        part = metrics(examples, decided)
        report[name] = {k: part[k] for k in ("recall", "false_alarm_rate")}
    return report


def sweep(split: str = "dev") -> dict[str, Any]:
    """Each similarity channel alone on its language of ``split`` (the rules were written on dev, so
    combined figures there say little about the threshold), and the setting the tuning rule picks."""
    examples = load(split)
    out: dict[str, Any] = {}
    for channel, lang in (("embedding", "en"), ("ngram", "zh")):
        subset = [
            (e, _similarity_only(a))
            for e, a in zip(examples, analyse_split(split), strict=True)
            if e.lang == lang
        ]
        rows = []
        for threshold in (0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70):
            for margin in (0.0, 0.03, 0.06, 0.10):
                setting = dataclasses.replace(
                    triage.Thresholds(), **{channel: threshold, f"{channel}_margin": margin}
                )
                m = metrics([e for e, _ in subset], [triage.decide(a, setting) for _, a in subset])
                rows.append(
                    {
                        "threshold": threshold,
                        "margin": margin,
                        "recall": m["recall"],
                        "far": m["false_alarm_rate"],
                    }
                )
        allowed = [r for r in rows if r["far"] <= MAX_SIMILARITY_FAR]
        best = max(allowed, key=lambda r: (r["recall"], r["threshold"], r["margin"]))
        out[channel] = {"language": lang, "rows": rows, "picked": best}
    return out


def main() -> None:
    report = {
        "benchmark": "red-flag triage: recall on emergencies, false-alarm rate on non-emergencies",
        "data": str(DATA.relative_to(RESULTS.parents[2])),
        "thresholds": dataclasses.asdict(triage.Thresholds()),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "dev": evaluate("dev"),
        "test": evaluate("test"),
        "first_sight": FIRST_SIGHT,
        "dev_sweep": sweep("dev"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for split in ("dev", "test"):
        r = report[split]
        print(f"{split}: n={r['n']} recall={r['recall']} false-alarm={r['false_alarm_rate']} "
              f"(rules only: {r['rules_only']}; similarity only: {r['similarity_only']})")  # fmt: skip
        for text in r["missed"]:
            print(f"  missed: {text}")
        for text in r["false_alarms"]:
            print(f"  false alarm: {text}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
