"""The evaluation gate on the tiny model: a challenger trained (models/training) on rows like the held-out
ones passes; adapters trained on shuffled answers or with their H-LoRA zeroed are rejected; and the whole
admin path — corrections in the records, a snapshot, training, the gate — holds together.

The tiny model's pictures carry meaning here by colour (one finding per colour), so that a model can
learn to read them in a few dozen steps and image reliance is a real signal."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from memory.db import make_engine, make_session_factory, transaction
from memory.migrate import upgrade
from memory.pixels import PixelStore
from memory.records import Records
from models.adapters import save_adapter, with_adapter
from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from models.training import Row, TrainConfig, preset, save_trained, train
from tests.tools.test_finetune_dataset import SETUP, draft, make_world, png
from tools.finetune import (
    GateReport,
    RegressionSet,
    load_regression_set,
    load_snapshot,
    run_gate,
    snapshot_from_records,
)
from tools.finetune.dataset import group_hash, split_of
from tools.finetune.gate import GateConfig
from tools.finetune.vqa import freeze_regression_set

PLUGIN = "comprehension"
QUESTION = "Describe the findings in this CT image."
FINDINGS = {  # colour of the study -> what it shows
    (200, 30, 30): "No focal consolidation.",
    (30, 190, 60): "A large effusion.",
    (40, 60, 210): "Severe pneumothorax.",
}
CHECKS = {"heldout_logprob", "regression_vqa", "image_reliance"}


pytestmark = pytest.mark.usefixtures("one_thread")


def shade(colour: tuple[int, int, int], step: int) -> tuple[int, int, int]:
    """Another study of the same finding: the same colour, a little lighter."""
    return tuple(min(255, value + 6 * step) for value in colour)  # type: ignore[return-value]


def hyper(epochs: int):
    # Dropout off and a constant, higher rate than the paper's: a few dozen steps on the tiny model.
    return dataclasses.replace(
        preset(3, "comprehension"),
        epochs=epochs,
        batch_size=4,
        dropout=0.0,
        lr=3e-3,
        projector_lr=3e-3,
        schedule="constant",
        warmup_ratio=0.0,
    )


def trained(spec: ModelSpec, rows: list[Row], out: Path, epochs: int, start: Path | None = None) -> Path:
    model = HealthGPT(spec if start is None else with_adapter(spec, PLUGIN, start))
    result = train(model, rows, TrainConfig(PLUGIN, hyper=hyper(epochs), micro_batch_size=4))
    return save_trained(model, result, out, out.name)


@dataclass
class Lab:
    spec: ModelSpec
    champion: Path
    good: Path
    shuffled: Path
    zeroed: Path
    heldout: list[Row]
    regression: RegressionSet


@pytest.fixture(scope="module")
def lab(tiny_spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A champion that half-learned the colours, and three challengers trained from it: on more rows of
    the same kind (good), on the same rows with each study given another colour's finding (shuffled), and
    the champion with its H-LoRA zeroed. Trained once for the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster on a shared machine
    try:
        root = tmp_path_factory.mktemp("gate")
        train_rows, heldout = [], []
        for colour, finding in FINDINGS.items():
            for step in range(4):  # the first study of each finding is held out
                path = root / f"{colour}-{step}.png"
                path.write_bytes(png(shade(colour, step)))
                (heldout if step == 0 else train_rows).append(Row("sft", QUESTION, finding, image=path))
        regression = root / "regression"
        regression.mkdir()
        items = []
        for index, colour in enumerate(FINDINGS):
            (regression / f"{index}.png").write_bytes(png(shade(colour, 9)))
            items.append(
                {
                    "id": f"colour-{index}",
                    "question": QUESTION,
                    "choices": list(FINDINGS.values()),
                    "answer": index,
                    "image": f"{index}.png",
                }
            )
        (regression / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
        freeze_regression_set(regression, name="colours", description="test set", synthetic=True)

        champion = trained(tiny_spec, train_rows, root / "champion", epochs=20)
        good = trained(tiny_spec, train_rows, root / "good", epochs=20, start=champion)
        findings = list(FINDINGS.values())
        other = {finding: findings[(i + 1) % len(findings)] for i, finding in enumerate(findings)}
        shuffled_rows = [dataclasses.replace(row, answer=other[row.answer]) for row in train_rows]
        shuffled = trained(tiny_spec, shuffled_rows, root / "shuffled", epochs=20, start=champion)
        model = HealthGPT(with_adapter(tiny_spec, PLUGIN, champion))
        with torch.no_grad():
            for group in ("hlora", "router"):
                for tensor in model.plugin_parameter_groups(PLUGIN)[group].values():
                    tensor.zero_()
        zeroed = save_adapter(model, PLUGIN, root / "zeroed", "zeroed")
        yield Lab(tiny_spec, champion, good, shuffled, zeroed, heldout, load_regression_set(regression))
    finally:
        torch.set_num_threads(threads)


def gate(lab: Lab, challenger: Path, **options) -> GateReport:
    model = HealthGPT(lab.spec)
    report = run_gate(
        model,
        PLUGIN,
        challenger,
        heldout=options.pop("heldout", lab.heldout),
        champion=options.pop("champion", lab.champion),
        regression=options.pop("regression", lab.regression),
        **options,
    )
    assert set(model.spec.plugins) == set(lab.spec.plugins)  # the adapters loaded for the run are gone
    return report


def test_a_better_challenger_passes(lab: Lab) -> None:
    report = gate(lab, lab.good, heldout_source="sha-of-the-dataset")
    assert report.passed, report.model_dump_json(indent=2)
    assert {c.name for c in report.checks} == CHECKS and all(c.passed and not c.reason for c in report.checks)
    assert (report.champion_version, report.challenger_version) == ("champion", "good")
    checks = {c.name: c for c in report.checks}
    assert checks["heldout_logprob"].items == 3 and checks["heldout_logprob"].delta >= 0.02
    assert checks["regression_vqa"].items == 3 and checks["image_reliance"].items == 3 + 3
    # Stored with the job as JSON, and read back the same.
    stored = json.loads(report.model_dump_json())
    assert stored["passed"] is True and stored["heldout_source"] == "sha-of-the-dataset"
    assert GateReport.model_validate(stored) == report


@pytest.mark.parametrize("harmful", ["shuffled", "zeroed"])
def test_a_harmful_adapter_is_rejected(lab: Lab, harmful: str) -> None:
    report = gate(lab, getattr(lab, harmful))
    failed = {c.name: c for c in report.checks if not c.passed}
    assert not report.passed
    # Worse on the held-out corrections, wrong on the regression items, less use of the picture.
    assert set(failed) == CHECKS, report.model_dump_json(indent=2)
    assert failed["heldout_logprob"].delta < 0 and all(c.reason for c in failed.values())


def test_the_resident_plugin_is_the_champion_by_default(lab: Lab) -> None:
    loaded = gate(lab, lab.good)
    model = HealthGPT(with_adapter(lab.spec, PLUGIN, lab.champion))
    resident = run_gate(model, PLUGIN, lab.good, heldout=lab.heldout, regression=lab.regression)
    assert resident.champion_version == "champion" and resident.passed
    for ours, theirs in zip(resident.checks, loaded.checks, strict=True):
        assert ours.champion == pytest.approx(theirs.champion, abs=1e-5)
        assert ours.challenger == pytest.approx(theirs.challenger, abs=1e-5)


def test_no_gain_and_no_items_fail_and_the_shipped_set_runs(lab: Lab) -> None:
    # The champion against itself on the shipped synthetic set: nothing regresses, nothing is gained.
    same = gate(lab, lab.champion, regression=None)
    checks = {c.name: c for c in same.checks}
    assert not same.passed and same.regression_set["synthetic"] is True
    assert (
        checks["heldout_logprob"].delta == 0
        and "less than the margin 0.02" in checks["heldout_logprob"].reason
    )
    assert checks["regression_vqa"].passed and checks["regression_vqa"].items == 8
    assert checks["image_reliance"].passed and checks["image_reliance"].delta == 0
    empty = gate(lab, lab.good, heldout=[], config=GateConfig(heldout_margin=0.0))
    heldout = next(c for c in empty.checks if c.name == "heldout_logprob")
    assert not empty.passed and heldout.items == 0 and "no held-out corrections" in heldout.reason


def test_an_adapter_of_another_base_model_is_refused(lab: Lab) -> None:
    other = HealthGPT(lab.spec.model_copy(update={"name": "another-model"}))
    with pytest.raises(ValueError, match="was trained on"):
        run_gate(other, PLUGIN, lab.good, heldout=lab.heldout, regression=lab.regression)
    assert set(other.spec.plugins) == set(lab.spec.plugins)


@pytest.fixture
def sessions(database_url: str):
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def test_from_corrections_to_a_passing_gate(lab: Lab, sessions, tmp_path: Path) -> None:
    """The admin's path: physicians correct the champion's reads; the feedback since the champion becomes
    a snapshot; a challenger trained on its train split passes the gate on its held-out split."""
    pixels = PixelStore(tmp_path / "pixels")
    world = make_world(sessions)
    with transaction(sessions) as session:
        Records(session, SETUP).register_adapter(PLUGIN, "champion", ["adapter.safetensors"])
    placed = {"train": 0, "heldout": 0}
    for _ in range(12):
        with transaction(sessions) as session:
            records = Records(session, world.doctor)
            study = records.add_study(world.patient_id, modality="CT")
            # Findings spread over both sides of the split, whichever ids the database hands out.
            side = split_of(group_hash(f"study:{study.id}"), 0.2)
            colour = list(FINDINGS)[placed[side] % len(FINDINGS)]
            study.pixel_key = pixels.put(png(shade(colour, 1 + placed[side])))
            placed[side] += 1
            provenance = {"model": lab.spec.name, "plugin": PLUGIN, "adapter_version": "champion"}
            drafted = draft("Patient reports headache, fever and a cough.", "(none stated)")
            read = records.add_read(study.id, drafted, provenance)
            corrected = f"Findings: {FINDINGS[colour]}"
            records.sign_read(read.id, corrected)
            records.add_feedback("correction", {"text": corrected, "draft": drafted}, read_id=read.id)
    with transaction(sessions) as session:
        manifest = snapshot_from_records(
            Records(session, world.admin), PLUGIN, tmp_path / "dataset", pixels, since_version="champion"
        )
    assert manifest.counts["heldout"] == {"sft": placed["heldout"], "pair": placed["heldout"], "kto": 0}
    snapshot = load_snapshot(tmp_path / "dataset", pixels)
    challenger = trained(lab.spec, snapshot.train, tmp_path / "challenger", epochs=10, start=lab.champion)
    report = gate(lab, challenger, heldout=snapshot.heldout, heldout_source=manifest.digest)
    assert report.passed, report.model_dump_json(indent=2)
    assert report.heldout_source == manifest.digest
