"""Training on the tiny model: each stage trains exactly its tensors, the model memorises, a checkpoint
resumes to the same weights, the preference losses point the right way, and the result is an adapter
the existing loading path reads back to the same logits."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.adapters import adapter_plugin_spec, with_adapter
from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from models.training import (
    Progress,
    Row,
    StagePreset,
    TrainConfig,
    dpo_loss,
    kto_loss,
    preset,
    read_rows,
    save_trained,
    train,
)
from models.training.presets import TRAINS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "study.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return path


def _rows(image: Path) -> list[Row]:
    return [
        Row("sft", "What does this image show?", "No focal consolidation.", image=image),
        Row("sft", "Describe the findings.", "Benign tissue without atypia."),
    ]


def _hyper(stage: int, task: str = "comprehension", **changes: object) -> StagePreset:
    return dataclasses.replace(preset(stage, task), **{"epochs": 1, "batch_size": 2, **changes})


def _snapshot(model: HealthGPT) -> dict[str, torch.Tensor]:
    """Every tensor of the model: base LLM (all plugins inside), CLIP tower, projectors, own tables."""
    state = {f"llm.{k}": v.detach().clone() for k, v in model.llm.state_dict().items()}
    state |= {f"vision.{k}": v.detach().clone() for k, v in model.vision.state_dict().items()}
    state |= {f"projectors.{k}": v.detach().clone() for k, v in model.projectors.state_dict().items()}
    for plugin, tables in model.overrides.items():
        state |= {f"tables.{plugin}.{k}": v.detach().clone() for k, v in tables.items()}
    return state


def _trainable_names(model: HealthGPT, plugin: str, stage: int) -> set[str]:
    """Snapshot names of the groups a stage trains, from the model's own grouping."""
    task = model.spec.plugins[plugin].task
    if "tables" in TRAINS[(stage, task)]:
        model.own_tables(plugin)
    groups = model.plugin_parameter_groups(plugin)
    names = set()
    for group in TRAINS[(stage, task)]:
        for key in groups[group]:
            if group == "tables":
                names.add(f"tables.{plugin}.{key}")
            elif group == "projector":
                names.add(f"projectors.{plugin}.{key.removeprefix('model.mm_projector.')}")
            else:  # "<layer>.lora_A.weight" lives at "<layer>.plugins.<plugin>.lora_A.weight" in the LLM
                layer, part, weight = key.rsplit(".", 2)
                names.add(f"llm.{layer}.plugins.{plugin}.{part}.{weight}")
    return names


@pytest.mark.parametrize(
    ("stage", "plugin"),
    [(1, "comprehension"), (1, "generation"), (2, "generation"), (3, "comprehension"), (3, "generation")],
)
def test_a_stage_changes_exactly_its_trainable_tensors(
    tiny_spec: ModelSpec, image: Path, stage: int, plugin: str
) -> None:
    model = HealthGPT(tiny_spec)
    task = model.spec.plugins[plugin].task
    trainable = _trainable_names(model, plugin, stage)
    before = _snapshot(model)
    flags = [p.requires_grad for p in model.llm.parameters()]
    assert trainable and trainable <= before.keys()
    hyper = _hyper(stage, task, epochs=2, lr=1e-2, projector_lr=1e-2)
    result = train(model, _rows(image), TrainConfig(plugin, hyper=hyper))
    assert result.steps == 2 and result.completed
    after = _snapshot(model)
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == trainable  # the frozen ones bit-identical, every trained one moved
    assert all(after[name].dtype == before[name].dtype for name in before)
    assert [p.requires_grad for p in model.llm.parameters()] == flags  # put back as they were


def test_presets_follow_the_paper() -> None:
    assert TRAINS[(1, "comprehension")] == {"projector"}
    assert TRAINS[(1, "generation")] == {"projector", "hlora", "router"}
    assert TRAINS[(2, "comprehension")] == TRAINS[(2, "generation")] == {"tables"}
    assert TRAINS[(3, "comprehension")] == {"hlora", "router", "projector"}
    stage1 = preset(1, "comprehension")
    assert (stage1.projector_lr, stage1.batch_size, stage1.dropout) == (1e-3, 256, 0.0)
    assert preset(1, "generation").lr == 2e-4 and preset(1, "generation", "phi4_instruct").lr == 1e-4
    stage2 = preset(2, "generation")
    assert (stage2.lr, stage2.batch_size, stage2.schedule) == (2e-4, 32, "constant")
    stage3 = preset(3, "comprehension")
    assert (stage3.lr, stage3.projector_lr, stage3.batch_size, stage3.dropout) == (2e-4, 2e-5, 128, 0.05)
    assert preset(3, "generation").batch_size == 64
    assert all(preset(s, "comprehension").weight_decay == 0 for s in (1, 2, 3))
    with pytest.raises(ValueError, match="no stage 4"):
        preset(4, "comprehension")


def test_teacher_forced_logprobs_match_scoring(tiny_spec: ModelSpec, image: Path) -> None:
    model = HealthGPT(tiny_spec)
    layer = model.spec.plugins["comprehension"].vision_layer
    with Image.open(image) as picture:
        patches = model.vision_features(model.pixel_values(picture), [layer])[layer]
        scored = model.score("What does this image show?", "No focal consolidation.", picture)
    ids, length = model.example_ids(
        "What does this image show?", "No focal consolidation.", True, "comprehension"
    )
    other_ids, other_length = model.example_ids(
        "Describe.", "A long answer with many more words.", False, "comprehension"
    )
    with torch.no_grad():  # batched with a longer, text-only row: padding must not change anything
        logprobs, real = model.token_logprobs(
            [(ids, length, patches), (other_ids, other_length, None)], "comprehension"
        )
    assert real[0].sum() == length == len(scored.logprobs)
    torch.testing.assert_close(logprobs[0][real[0]], torch.tensor(scored.logprobs), rtol=0, atol=1e-5)


def test_the_tiny_model_memorises_rows_in_stage_3(tiny_spec: ModelSpec, image: Path) -> None:
    model = HealthGPT(tiny_spec)
    rows = _rows(image)
    # Dropout off and a constant, higher rate: memorising is the point here. With the output head frozen
    # (stage 3), the tiny head (hidden 64, init std 0.02) caps logits near 1.3, so the per-token loss
    # cannot go below ~4.9 from 6.2; the greedy answer can still become exact.
    hyper = _hyper(
        3, epochs=150, lr=3e-3, projector_lr=3e-3, dropout=0.0, schedule="constant", warmup_ratio=0.0
    )
    seen: list[Progress] = []
    result = train(model, rows, TrainConfig("comprehension", hyper=hyper), progress=seen.append)
    assert result.loss_last < result.loss_first - 1.0
    assert [p.step for p in seen] == list(range(1, 151)) and seen[-1].eta_seconds == 0
    assert all(p.tokens_per_second > 0 and math.isfinite(p.loss) for p in seen)
    for row in rows:
        assert _ask(model, row) == row.answer


def _ask(model: HealthGPT, row: Row) -> str:
    if row.image is None:
        return model.ask(row.question, max_new_tokens=30).text
    with Image.open(row.image) as picture:
        return model.ask(row.question, picture, max_new_tokens=30).text


def _mixed_rows(image: Path) -> list[Row]:
    return [
        *_rows(image),
        Row("pair", "Is there an effusion?", "No effusion.", rejected="A large effusion.", image=image),
        Row("kto", "Summarise the study.", "Normal study.", desirable=True),
        Row("kto", "Summarise the report.", "Severe pneumothorax.", desirable=False),
    ]


def test_resuming_a_checkpoint_gives_the_uninterrupted_weights(
    tiny_spec: ModelSpec, image: Path, tmp_path: Path
) -> None:
    rows = _mixed_rows(image)
    # Dropout on (the RNG must resume too), two micro-batches per step, two epochs of shuffling.
    hyper = _hyper(3, epochs=3, batch_size=4, lr=5e-3, projector_lr=5e-3)
    config = TrainConfig("comprehension", hyper=hyper, micro_batch_size=2, seed=7)

    straight = HealthGPT(tiny_spec)
    whole = train(straight, rows, dataclasses.replace(config, checkpoint_dir=tmp_path / "a"))
    assert whole.completed and whole.steps == whole.total_steps == 6

    steps: list[int] = []
    part = train(
        HealthGPT(tiny_spec),
        rows,
        dataclasses.replace(config, checkpoint_dir=tmp_path / "b"),
        progress=lambda p: steps.append(p.step),
        should_stop=lambda: len(steps) >= 2,
    )
    assert not part.completed and part.steps == 2
    resumed_model = HealthGPT(tiny_spec)  # a fresh process would start from the champion again
    resumed = train(resumed_model, rows, dataclasses.replace(config, checkpoint_dir=tmp_path / "b"))
    assert resumed.resumed_from == 2 and resumed.completed and resumed.steps == 6
    assert resumed.losses == whole.losses
    ours, theirs = _snapshot(resumed_model), _snapshot(straight)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)

    with pytest.raises(ValueError, match="different run"):
        train(HealthGPT(tiny_spec), rows, dataclasses.replace(config, seed=8, checkpoint_dir=tmp_path / "b"))


def test_dpo_loss_prefers_the_chosen_answer() -> None:
    zero = torch.tensor([0.0])
    assert torch.allclose(dpo_loss(zero, zero, zero, zero, 0.1), torch.log(torch.tensor([2.0])))
    better = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-3.0]), 0.1
    )
    worse = dpo_loss(
        torch.tensor([-5.0]), torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-3.0]), 0.1
    )
    assert better < math.log(2) < worse
    chosen = torch.tensor([-3.0], requires_grad=True)
    rejected = torch.tensor([-3.0], requires_grad=True)
    dpo_loss(chosen, rejected, torch.tensor([-3.0]), torch.tensor([-3.0]), 0.1).sum().backward()
    assert chosen.grad < 0 < rejected.grad  # descending raises the chosen answer, lowers the rejected one


def test_kto_loss_rewards_desirable_and_penalises_undesirable() -> None:
    policy = torch.tensor([-2.0, -2.0], requires_grad=True)
    reference = torch.tensor([-2.0, -2.0])
    desirable = torch.tensor([True, False])
    loss = kto_loss(policy, reference, desirable, kl=0.0, beta=0.1)
    assert torch.allclose(loss, torch.tensor([0.5, 0.5]))  # no move from the reference: σ(0)
    loss.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]
    up = kto_loss(torch.tensor([-1.0, -1.0]), reference, desirable, kl=0.0, beta=0.1)
    assert up[0] < 0.5 < up[1]  # raising both helps the desirable row and hurts the undesirable one
    weighted = kto_loss(torch.tensor([-2.0, -2.0]), reference, desirable, 0.0, 0.1, 1.0, 3.0)
    assert torch.allclose(weighted, torch.tensor([0.5, 1.5]))


def test_preference_training_moves_the_policy_the_right_way(tiny_spec: ModelSpec, image: Path) -> None:
    model = HealthGPT(tiny_spec)
    rows = [
        Row("pair", "Is there an effusion?", "No effusion.", rejected="A large effusion.", image=image),
        Row("kto", "Summarise the report.", "Severe pneumothorax.", desirable=False),
        Row("kto", "Summarise the study.", "Normal study.", desirable=True),
    ]

    def logprob(question: str, answer: str, picture: Path | None) -> float:
        if picture is None:
            return model.score(question, answer).sum_logprob
        with Image.open(picture) as opened:
            return model.score(question, answer, opened).sum_logprob

    def margin() -> float:
        return logprob(rows[0].question, "No effusion.", image) - logprob(
            rows[0].question, "A large effusion.", image
        )

    before = (
        margin(),
        logprob(rows[1].question, rows[1].answer, None),
        logprob(rows[2].question, rows[2].answer, None),
    )
    hyper = _hyper(3, epochs=15, batch_size=3, lr=3e-3, projector_lr=3e-3, dropout=0.0)
    result = train(model, rows, TrainConfig("comprehension", hyper=hyper, dpo_beta=0.5, kto_beta=0.5))
    after = (
        margin(),
        logprob(rows[1].question, rows[1].answer, None),
        logprob(rows[2].question, rows[2].answer, None),
    )
    assert result.loss_last < result.loss_first
    assert after[0] > before[0]  # DPO: the correction gained on the draft
    assert after[1] < before[1] and after[2] > before[2]  # KTO: thumbs down fell, thumbs up rose


@pytest.mark.parametrize(("stage", "plugin"), [(3, "comprehension"), (2, "generation")])
def test_the_saved_adapter_loads_back_with_the_same_logits(
    tiny_spec: ModelSpec, image: Path, tmp_path: Path, stage: int, plugin: str
) -> None:
    model = HealthGPT(tiny_spec)
    hyper = _hyper(stage, model.spec.plugins[plugin].task, epochs=2, lr=1e-2, projector_lr=1e-2)
    result = train(model, _rows(image), TrainConfig(plugin, hyper=hyper))
    out = save_trained(model, result, tmp_path / "adapter", "refresh-1", parent=tiny_spec.adapter_version)
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and len(record["losses"]) == 2 and record["hyperparameters"]["stage"] == stage

    _, metadata = adapter_plugin_spec(out)
    assert (metadata["version"], metadata["parent"], metadata["plugin"]) == (
        "refresh-1",
        "tiny-seed0-v1",
        plugin,
    )
    assert metadata["overrides_tables"] == (
        [] if stage == 3 else ["lm_head.weight", "model.embed_tokens.weight"]
    )
    reloaded = HealthGPT(with_adapter(tiny_spec, plugin, out))
    assert reloaded.load_reports[plugin].ok and reloaded.spec.adapter_version == "refresh-1"
    starting = HealthGPT(tiny_spec)
    with Image.open(image) as picture:
        ours, _, _ = model.teacher_forced_logits("Describe.", "A finding.", picture, plugin)
        theirs, _, _ = reloaded.teacher_forced_logits("Describe.", "A finding.", picture, plugin)
        champion, _, _ = starting.teacher_forced_logits("Describe.", "A finding.", picture, plugin)
    assert torch.equal(ours, theirs) and not torch.equal(ours, champion)


def test_gradient_accumulation_does_not_depend_on_the_split(tiny_spec: ModelSpec, image: Path) -> None:
    rows = _mixed_rows(image)[:4]
    hyper = _hyper(3, batch_size=4, lr=1e-2, projector_lr=1e-2, dropout=0.0, max_grad_norm=None)
    weights = []
    for micro in (1, 4):
        model = HealthGPT(tiny_spec)
        train(model, rows, TrainConfig("comprehension", hyper=hyper, micro_batch_size=micro))
        weights.append(model.plugin_parameter_groups("comprehension"))
    # Rounding only: the split changes the order in which float32 gradients are summed (2e-5 relative
    # on an AVX-512 machine); a split that weighted tokens differently would move weights by far more.
    for group in ("hlora", "router", "projector"):
        for key, value in weights[0][group].items():
            torch.testing.assert_close(value, weights[1][group][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("dtype", "precision"), [("float32", "bf16"), ("float16", "auto")])
def test_autocast_trains_and_keeps_the_model_dtype(
    tiny_spec: ModelSpec, image: Path, tmp_path: Path, dtype: str, precision: str
) -> None:
    # The GPU path on CPU: bf16 autocast over a float32 model, and fp16 autocast with a gradient scaler
    # over float32 masters of a float16 model's trained tensors.
    spec = tiny_spec.model_copy(update={"dtype": dtype})
    model = HealthGPT(spec)
    hyper = _hyper(3, epochs=3, lr=1e-2, projector_lr=1e-2)
    result = train(model, _rows(image), TrainConfig("comprehension", hyper=hyper, precision=precision))
    assert all(math.isfinite(loss) for loss in result.losses)
    groups = model.plugin_parameter_groups("comprehension")
    assert {t.dtype for group in groups.values() for t in group.values()} == {getattr(torch, dtype)}
    out = save_trained(model, result, tmp_path / "adapter", "half-1")
    reloaded = HealthGPT(with_adapter(spec, "comprehension", out))
    ours, _, _ = model.teacher_forced_logits("Describe.", "A finding.")
    theirs, _, _ = reloaded.teacher_forced_logits("Describe.", "A finding.")
    assert torch.equal(ours, theirs)
    if dtype == "float16":
        with pytest.raises(ValueError, match="float16 model trains under fp16"):
            train(model, _rows(image), TrainConfig("comprehension", hyper=hyper, precision="bf16"))


def test_rows_from_jsonl(tmp_path: Path, image: Path) -> None:
    data = tmp_path / "rows.jsonl"
    lines = [
        {"question": "Q1", "answer": "A1", "image": image.name, "id": 7},
        {"question": "Q2", "chosen": "good", "rejected": "bad"},
        {"question": "Q3", "answer": "A3", "desirable": False},
    ]
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    rows = read_rows(data)
    assert [r.kind for r in rows] == ["sft", "pair", "kto"]
    assert rows[0].image == image and rows[1].rejected == "bad" and rows[2].desirable is False
    for bad, message in [
        ('{"question": "Q"}', "'answer' must be"),
        ('{"question": "Q", "answer": "A", "image": "missing.png"}', "image not found"),
        ('{"question": "Q", "chosen": "same", "rejected": "same"}', "the same text"),
        ("not json", "not JSON"),
    ]:
        data.write_text(json.dumps(lines[0]) + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=message) as caught:
            read_rows(data)
        assert "rows.jsonl:2" in str(caught.value)


def test_unknown_plugin_and_too_long_rows_are_refused(tiny_spec: ModelSpec, image: Path) -> None:
    model = HealthGPT(tiny_spec)
    with pytest.raises(ValueError, match="unknown plugin"):
        train(model, _rows(image), TrainConfig("nope"))
    with pytest.raises(ValueError, match="more than max_length 20"):
        train(model, _rows(image), TrainConfig("comprehension", hyper=_hyper(3, max_length=20)))
