"""`healthagent adapters train` trains offline on curated rows, and `model ask --adapter` answers with the
result: the tiny model learns its rows end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.tiny import build_tiny
from serving.cli import app

runner = CliRunner()
ROWS = [
    {"question": "Describe the findings.", "answer": "Benign tissue without atypia."},
    {"question": "What does this image show?", "answer": "No focal consolidation.", "image": "study.png"},
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("models") / "tiny-seed0", seed=0))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "study.png")
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def _json(*args: str) -> dict | list:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_train_then_ask_with_the_adapter(spec: str, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "refresh-1"
    result = runner.invoke(
        app,
        [
            "adapters",
            "train",
            "--spec",
            spec,
            "--plugin",
            "comprehension",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "150",
            "--batch-size",
            "2",
            "--lr",
            "3e-3",
            "--projector-lr",
            "3e-3",
            "--dropout",
            "0",
            "--seed",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 150 and summary["examples"] == 2 and summary["completed"]
    assert summary["loss_last"] < summary["loss_first"] - 1.0
    assert summary["out"] == str(out) and summary["version"] == "refresh-1"
    assert summary["parent"] == "tiny-seed0-v1" and summary["seconds"] > 0
    assert "step 150/150" in result.stderr and "tok/s" in result.stderr  # the progress bar, off stdout
    assert (out / "adapter.json").is_file() and (out / "training.json").is_file()

    ask = ["model", "ask", "--spec", spec, "--question", ROWS[0]["question"], "--json"]
    trained = _json(*ask, "--adapter", str(out))
    assert trained["text"] == ROWS[0]["answer"] and trained["adapter_version"] == "refresh-1"
    assert _json(*ask)["text"] != ROWS[0]["answer"]  # the champion never learnt it

    again = runner.invoke(
        app,
        [
            "adapters",
            "train",
            "--spec",
            spec,
            "--plugin",
            "comprehension",
            "--data",
            str(data),
            "--out",
            str(out),
        ],
    )
    assert again.exit_code == 2 and "already holds an adapter" in again.output


def test_text_output_and_a_second_stage_from_an_adapter(spec: str, data: Path, tmp_path: Path) -> None:
    first = tmp_path / "fused"
    result = runner.invoke(
        app,
        [
            "adapters",
            "train",
            "--spec",
            spec,
            "--plugin",
            "generation",
            "--stage",
            "2",
            "--data",
            str(data),
            "--out",
            str(first),
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "loss_first:" in result.stdout and "steps: 1" in result.stdout
    metadata = json.loads((first / "adapter.json").read_text())
    assert metadata["overrides_tables"] == ["lm_head.weight", "model.embed_tokens.weight"]

    summary = _json(
        "adapters",
        "train",
        "--spec",
        spec,
        "--plugin",
        "generation",
        "--adapter",
        str(first),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "tuned"),
        "--json",
    )
    assert summary["parent"] == "fused" and summary["stage"] == 3


def test_bad_inputs_are_clear_errors(spec: str, data: Path, tmp_path: Path) -> None:
    def train(*args: str) -> str:
        result = runner.invoke(
            app, ["adapters", "train", "--spec", spec, "--out", str(tmp_path / "x"), *args]
        )
        assert result.exit_code == 2, result.output
        return result.output

    assert "not found" in train("--plugin", "comprehension", "--data", str(tmp_path / "none.jsonl"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "Q", "answer": "A"}\n{"question": "Q"}\n')
    assert "broken.jsonl:2" in train("--plugin", "comprehension", "--data", str(broken))
    assert "unknown plugin" in train("--plugin", "nope", "--data", str(data))
    assert "Invalid value for '--stage'" in train(
        "--plugin", "comprehension", "--data", str(data), "--stage", "4"
    )
    assert not (tmp_path / "x").exists()

    result = runner.invoke(
        app, ["model", "ask", "--spec", spec, "--question", "q", "--adapter", str(tmp_path)]
    )
    assert result.exit_code == 2 and "adapter.json" in result.output


def test_evaluate_runs_the_gate_offline_and_exits_1_on_a_failed_challenger(
    spec: str, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "short"
    trained = _json(
        "adapters", "train", "--spec", spec, "--plugin", "comprehension", "--data", str(data),
        "--out", str(out), "--epochs", "2", "--batch-size", "2", "--seed", "1", "--json",
    )  # fmt: skip
    assert trained["out"] == str(out)
    result = runner.invoke(
        app,
        ["adapters", "evaluate", "--spec", spec, "--plugin", "comprehension", "--challenger", str(out),
         "--heldout", str(data), "--json"],
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {c["name"] for c in report["checks"]} == {"heldout_logprob", "regression_vqa", "image_reliance"}
    assert result.exit_code == (0 if report["passed"] else 1)


def test_registry_and_jobs_on_a_fresh_database_and_promotion_needs_the_service(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    assert runner.invoke(app, ["db", "upgrade", "--config", str(config)]).exit_code == 0
    assert _json("adapters", "list", "--config", str(config), "--json") == []
    assert _json("adapters", "jobs", "--config", str(config), "--json") == []
    unreachable = runner.invoke(
        app,
        ["adapters", "promote", "v2", "--reason", "better", "--token", "ha_x", "--url", "http://127.0.0.1:9"],
    )
    assert unreachable.exit_code == 2 and "cannot reach the service" in unreachable.output


def test_datasets_add_and_list(tmp_path: Path, database_url: str, data: Path) -> None:
    """`adapters datasets add|list` register a curated file under the data directory, audited."""
    from sqlalchemy import select

    from memory.db import make_session_factory, transaction
    from memory.schema import AuditEntry
    from memory.users import new_token, set_bootstrap_token
    from serving.services import prepare_database
    from serving.settings import load_settings

    config = tmp_path / "settings.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\ndatabase_url: '{database_url}'\n")
    engine = prepare_database(load_settings(config))
    with transaction(make_session_factory(engine)) as session:
        set_bootstrap_token(session, new_token())
    base = ["adapters", "datasets"]
    assert "no curated datasets" in runner.invoke(app, [*base, "list", "--config", str(config)]).output

    added = _json(*base, "add", str(data), "--plugin", "comprehension", "--name", "demo", "--config",
                  str(config), "--json")  # fmt: skip
    assert added["rows"] == 2 and added["images"] == 1 and added["name"] == "demo"
    assert added["id"].startswith("comprehension-") and added["registered_by"]
    assert (tmp_path / "var" / "finetune" / "datasets" / added["id"] / "manifest.json").is_file()
    listed = _json(*base, "list", "--config", str(config), "--json")
    assert [d["id"] for d in listed] == [added["id"]]
    text = runner.invoke(app, [*base, "list", "--config", str(config)]).output
    assert added["id"] in text and "2 rows" in text and "demo" in text

    again = runner.invoke(
        app, [*base, "add", str(data), "--plugin", "comprehension", "--config", str(config)]
    )
    assert again.exit_code == 1 and "registered already" in again.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "Q", "answer": "A"}\n{"answer": "A"}\n')
    bad = runner.invoke(
        app, [*base, "add", str(broken), "--plugin", "comprehension", "--config", str(config)]
    )
    assert bad.exit_code == 2 and "broken.jsonl:2: 'question' must be a non-empty string" in bad.output
    with make_session_factory(engine)() as session:
        actions = [
            e.action for e in session.scalars(select(AuditEntry).where(AuditEntry.resource == "dataset"))
        ]
    engine.dispose()
    assert actions.count("dataset.write") == 1 and "dataset.read" in actions
