"""Random weights at the released shapes (issue 16): the presets match the released models' sizes, and a
model written at M3's true width loads through the same code as the released files and answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from models.healthgpt import HLORA_TARGETS, HealthGPT
from models.random_weights import PRESETS, build_random
from models.spec import ModelSpec
from models.tiny import ARCHITECTURES
from models.weights import OFFICIAL_PREFIX, read_state_dict
from serving.cli import app

# The reference's own counts of H-LoRA parameters (A + B + route, every layer) per released file, and
# the published backbone sizes (Phi-3-mini 3.8 B, Phi-4 14.7 B, Qwen2.5-32B 32.8 B, untied heads).
RELEASED_HLORA_M = {
    ("m3", "comprehension"): 102.9,
    ("m3", "generation"): 404.9,
    ("l14", "comprehension"): 116.7,
    ("xl32", "comprehension"): 283.4,
}
RELEASED_BACKBONE_B = {"m3": 3.82, "l14": 14.66, "xl32": 32.76}


def _meta_backbone(preset: str) -> torch.nn.Module:
    shape = PRESETS[preset].backbone
    config_class, model_class, _ = ARCHITECTURES[shape.arch]
    config = config_class(
        vocab_size=shape.config_vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):  # shapes only: no memory for 33 B parameters
        return model_class(config)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_have_the_released_shapes(preset: str) -> None:
    backbone = _meta_backbone(preset)
    billions = sum(p.numel() for p in backbone.parameters()) / 1e9
    assert billions == pytest.approx(RELEASED_BACKBONE_B[preset], abs=0.01)
    targets = HLORA_TARGETS[backbone.config.model_type]
    for name, plugin in PRESETS[preset].plugins.items():
        count = sum(
            (plugin.r + plugin.experts) * module.in_features + module.out_features * plugin.r
            for module_name, module in backbone.named_modules()
            if module_name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear)
        )
        assert count / 1e6 == pytest.approx(RELEASED_HLORA_M[(preset, name)], abs=0.05)


@pytest.fixture(scope="module")
def m3_one_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("random") / "m3"
    steps: list[str] = []
    spec = build_random("m3", out, layers=1, vision_layers=2, dtype="bfloat16", progress=steps.append)
    assert any("32,011" in s for s in steps) and any("rank 256" in s for s in steps)
    return spec


def test_an_m3_model_at_true_width_loads_and_answers(m3_one_layer: Path) -> None:
    spec = ModelSpec.from_yaml(m3_one_layer)
    assert spec.demo_weights and spec.dtype == "bfloat16" and spec.vq_tokens == 8192
    model = HealthGPT(spec)
    assert all(report.ok for report in model.load_reports.values()), model.load_reports
    assert model.llm.config.hidden_size == 3072 and len(model.tokenizer) == 32011 + 8195
    head = model.llm.get_output_embeddings().weight
    assert tuple(head.shape) == (40206, 3072) and head.dtype == torch.bfloat16
    # The released key layout: the official prefix, rank 256 for generation, the fusion tables.
    generation = read_state_dict(m3_one_layer.parent / "gen_hlora_weights.bin")
    key = f"{OFFICIAL_PREFIX}model.layers.0.mlp.gate_up_proj.lora_A.weight"
    assert tuple(generation[key].shape) == (256, 3072)
    fusion = read_state_dict(m3_one_layer.parent / "fusion_layer_weights.bin")
    assert tuple(fusion[f"{OFFICIAL_PREFIX}lm_head.weight"].shape) == (40206, 3072)

    picture = Image.new("RGB", (300, 300), (120, 60, 60))
    with_image = model.ask("What is shown?", picture, max_new_tokens=3)
    text_only = model.ask("What is shown?", max_new_tokens=3)
    assert len(with_image.token_ids) == 3 and all(0 <= t < 40206 for t in with_image.token_ids)
    # CLIP-L/14-336 gives 24 x 24 patch features in place of the <image> placeholder; its newline stays.
    assert with_image.prompt_tokens - text_only.prompt_tokens == 24 * 24 + 1


def test_the_cli_refuses_what_it_cannot_build(tmp_path: Path, m3_one_layer: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["model", "random", "--preset", "m7", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "unknown preset 'm7'" in unknown.output
    taken = runner.invoke(app, ["model", "random", "--preset", "m3", "--out", str(m3_one_layer.parent)])
    assert taken.exit_code == 2 and "exists" in taken.output
    dtype = runner.invoke(
        app, ["model", "random", "--preset", "m3", "--dtype", "int8", "--out", str(tmp_path / "y")]
    )
    assert dtype.exit_code == 2 and "unknown dtype" in dtype.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _hf_generate(model: HealthGPT, question: str, image, plugin: str, tokens: int) -> list[int]:
    """transformers' own generate() on the Hugging Face model, as the official scripts decode."""
    embeds = model.embed_prompt(question, image, plugin)[None]
    with model.as_single_task(plugin) as llm, torch.no_grad():
        out = llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=model.eos_token_ids[0],
        )
    return out[0, -tokens:].tolist()


def test_transformers_generate_on_the_single_task_model_matches_ours(m3_one_layer: Path) -> None:
    """The official-path baseline decodes with transformers' generate(); with the plugin's routing and
    its fusion tables in place it gives our greedy tokens (M3 generation carries its own tables)."""
    model = HealthGPT(ModelSpec.from_yaml(m3_one_layer))
    picture = Image.new("RGB", (300, 300), (40, 90, 140))
    for plugin, question in (("comprehension", "What is shown?"), ("generation", "Reconstruct the image.")):
        ours = model.ask(question, picture, plugin=plugin, max_new_tokens=4).token_ids
        assert _hf_generate(model, question, picture, plugin, 4) == ours, plugin
    head = model.llm.get_output_embeddings().weight
    with model.as_single_task("generation") as llm:
        assert llm.get_output_embeddings().weight is not head
    assert model.llm.get_output_embeddings().weight is head, "the shared tables are back"
