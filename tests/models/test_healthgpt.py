"""The tiny model end to end: build, load with a key audit, prompt, image path, generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from models.healthgpt import HealthGPT, expand_to_square
from models.spec import ModelSpec
from models.templates import get_template, user_message
from models.tiny import build_tiny, resolve_spec
from models.weights import read_state_dict, write_state_dict


def test_tiny_build_is_deterministic_and_reused(tmp_path: Path, tiny_spec: ModelSpec) -> None:
    spec_path = build_tiny(tmp_path / "tiny", seed=0)
    assert build_tiny(tmp_path / "tiny", seed=0) == spec_path  # second call reuses
    again = ModelSpec.from_yaml(spec_path)
    assert again.demo_weights and again.name == "tiny-seed0"
    for name, plugin in again.plugins.items():
        ours = read_state_dict(plugin.weights[0])
        theirs = read_state_dict(tiny_spec.plugins[name].weights[0])
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resolve_spec("tiny", tmp_path, seed=0).plugins.keys() == {"comprehension", "generation"}


def test_every_plugin_key_is_loaded(tiny_model: HealthGPT) -> None:
    layers = len(tiny_model.layers)
    for report in tiny_model.load_reports.values():
        assert report.ok
        assert report.loaded == 3 * layers + 4  # A, B, route per layer + projector weights/biases


def _spec_with_state(spec: ModelSpec, tmp_path: Path, edit) -> ModelSpec:
    plugin = spec.plugins["comprehension"]
    state = read_state_dict(plugin.weights[0])
    edit(state)
    path = tmp_path / "edited.safetensors"
    write_state_dict(state, path)
    edited = plugin.model_copy(update={"weights": [path]})
    return spec.model_copy(update={"plugins": {"comprehension": edited}})


def test_missing_key_is_an_error(tiny_spec: ModelSpec, tmp_path: Path) -> None:
    def drop(state: dict) -> None:
        del state[next(k for k in state if k.endswith("lora_B.weight"))]

    with pytest.raises(ValueError, match="1 missing"):
        HealthGPT(_spec_with_state(tiny_spec, tmp_path, drop))


def test_unexpected_key_is_an_error(tiny_spec: ModelSpec, tmp_path: Path) -> None:
    def add(state: dict) -> None:
        state["base_model.model.model.layers.99.mlp.down_proj.lora_A.weight"] = torch.zeros(8, 4)

    with pytest.raises(ValueError, match="1 unexpected"):
        HealthGPT(_spec_with_state(tiny_spec, tmp_path, add))


def test_wrong_shape_names_the_key(tiny_spec: ModelSpec, tmp_path: Path) -> None:
    def reshape(state: dict) -> None:
        key = "base_model.model.model.mm_projector.0.bias"
        state[key] = torch.zeros(state[key].shape[0] + 1)

    with pytest.raises(ValueError, match=r"mm_projector\.0\.bias has shape"):
        HealthGPT(_spec_with_state(tiny_spec, tmp_path, reshape))


def test_phi3_prompt_layout() -> None:
    prompt = get_template("phi3_instruct").prompt(user_message("What is shown?", has_image=True))
    assert prompt == (
        "<|system|>\nYou are a helpful AI assistant.<|end|>"
        "\n<|user|>\n<image>\nWhat is shown?<|end|>\n<|assistant|>\n"
    )
    assert get_template("qwen_2").prompt("Q") == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        get_template("phi4_instruct")
        .prompt("Q")
        .endswith("<|im_end|>\n<|im_start|>user<|im_sep|>\nQ<|im_end|>\n<|im_start|>assistant<|im_sep|>\n")
    )
    with pytest.raises(ValueError, match="not available"):
        get_template("llama_2")


def test_expand_to_square_centres_the_image() -> None:
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    square = expand_to_square(image, (1, 2, 3))
    assert square.size == (4, 4)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((0, 1)) == (255, 0, 0)
    assert square.getpixel((0, 3)) == (1, 2, 3)


def test_ask_with_and_without_image(tiny_model: HealthGPT) -> None:
    image = Image.new("RGB", (70, 50), (30, 120, 200))
    with_image = tiny_model.ask("Describe the image.", image, max_new_tokens=6)
    text_only = tiny_model.ask("Describe the image.", None, max_new_tokens=6)
    patches = (56 // 14) ** 2
    ids = tiny_model.input_ids(tiny_model.prompt_for("Describe the image.", True, "comprehension"))
    assert ids.count(-200) == 1
    assert with_image.prompt_tokens == len(ids) - 1 + patches
    text_ids = tiny_model.input_ids(tiny_model.prompt_for("Describe the image.", False, "comprehension"))
    assert text_only.prompt_tokens == len(text_ids)
    assert 1 <= len(with_image.token_ids) <= 6
    # Greedy decoding is deterministic.
    assert tiny_model.ask("Describe the image.", image, max_new_tokens=6).token_ids == with_image.token_ids


def test_plugins_use_their_own_weights_and_vision_layer(tiny_model: HealthGPT) -> None:
    image = Image.new("RGB", (56, 56), (200, 200, 10))
    com = tiny_model.image_features(image, "comprehension")
    gen = tiny_model.image_features(image, "generation")
    assert com.shape == gen.shape == (1, 16, tiny_model.llm.config.hidden_size)
    assert not torch.allclose(com, gen)
    assert tiny_model.prompt_for("x", False, "generation").endswith("<start_index>")
    with pytest.raises(ValueError, match="unknown plugin"):
        tiny_model.ask("x", None, plugin="nope")


def test_qwen2_backbone_runs_with_every_projection_adapted(tmp_path: Path) -> None:
    """XL32's architecture: seven adapted projections per layer, q/k/v with biases, no VQ tokens."""
    spec = ModelSpec.from_yaml(build_tiny(tmp_path / "qwen", seed=3, arch="qwen2"))
    model = HealthGPT(spec)
    assert spec.template == "qwen_2"
    assert {name.rsplit(".", 1)[-1] for name in model.layers} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    assert model.layers["model.layers.0.self_attn.q_proj"].base.bias is not None
    assert model.tokenizer.token_to_id("<start_index>") is None  # the official Qwen path adds none
    assert all(report.ok for report in model.load_reports.values())
    answer = model.ask("What is shown?", Image.new("RGB", (30, 60), (5, 5, 5)), max_new_tokens=5)
    assert 1 <= len(answer.token_ids) <= 5


def test_choose_tokens_follows_each_rows_rule_in_one_batch(tiny_model: HealthGPT) -> None:
    """A batch of rows in every mode (free, VQ, <end_index> due, end due) gets the greedy choice of its
    own rule, and the log-probability of the token it got, from one call."""
    torch.manual_seed(3)
    vocab = len(tiny_model.tokenizer)
    logits = torch.randn(5, vocab)
    vq = tiny_model.vq_token_ids
    grid = 4
    rows = [
        (None, []),  # free
        (grid, [1]),  # still filling the grid: a VQ token
        (grid, [1, 2, 3, 4]),  # grid full: <end_index>
        (grid, [1, 2, 3, 4, 5]),  # after <end_index>: the end token
        (grid, []),  # a VQ token
    ]
    chosen = tiny_model.choose_tokens(logits, rows)
    logprobs = torch.log_softmax(logits, dim=-1)
    end_index = tiny_model.tokenizer.token_to_id("<end_index>")
    expected = [
        int(torch.argmax(logits[0])),
        int(vq[torch.argmax(logits[1, vq])]),
        end_index,
        tiny_model.eos_token_ids[-1],
        int(vq[torch.argmax(logits[4, vq])]),
    ]
    assert [token for token, _ in chosen] == expected
    for i, (token, logprob) in enumerate(chosen):
        assert logprob == float(logprobs[i, token])
    # A row's choice does not depend on the others in the batch.
    assert tiny_model.choose_tokens(logits[[0, 4]], [rows[0], rows[4]]) == [chosen[0], chosen[4]]
