"""Our HealthGPT against the official implementation's recorded outputs (shared/fixtures/official-tiny).

Tolerances: ids and strings exact; pixels 1e-5; features 1e-4; per-token log-probs 1e-3 (the fixture's);
float32 logits ``LOGITS_ATOL``, checked both with the official code's own products (``nn.Linear``: MKL's
sgemm on a CPU) and with the served model's (oneDNN on a CPU in float32, models.kernels).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.contract import GenerationRequest
from models.healthgpt import HealthGPT
from models.spec import ModelSpec

# case -> (plugin, uses the image)
CASES = {
    "com_text": ("comprehension", False),
    "com_image": ("comprehension", True),
    "com_image_fusion": ("comprehension-fused", True),
    "gen": ("generation", True),
}


# The fixture's own logits bound, 1e-4, is narrower than float32 BLAS itself spreads: the official code's
# products alone, on one Intel AVX-512 CPU, deviate from the recorded logits (up to |21|) by 2.3e-5 to
# 1.9e-4 depending only on which instruction path MKL takes (MKL_CBWR: AVX2 1.2e-4 for "gen", AVX512
# 1.9e-4 for "com_image_fusion", SSE4_2 1.7e-4; 6.5e-5 at most on an AMD EPYC). That is summation order,
# not arithmetic (normwise 3e-6), so both kinds of products are held to 1e-5 of the largest logit; a
# wrong weight, template or rotary position moves logits by units, and every id and string stays exact.
LOGITS_ATOL = 3e-4


@pytest.fixture(scope="module")
def model(official_tiny: Path) -> HealthGPT:
    """As served: oneDNN products for float32 on a CPU."""
    return HealthGPT(ModelSpec.from_yaml(official_tiny / "healthgpt.yaml"))


@pytest.fixture(scope="module")
def official_products(official_tiny: Path) -> HealthGPT:
    """The official code's own products (``nn.Linear``), held to the same logits bound as the served ones."""
    return HealthGPT(ModelSpec.from_yaml(official_tiny / "healthgpt.yaml"), onednn=False)


@pytest.fixture(scope="module")
def image(official_tiny: Path) -> Image.Image:
    return Image.open(official_tiny / "image.png")


def _expected(root: Path, case: str) -> dict:
    return json.loads((root / case / "expected.json").read_text())


def test_every_plugin_file_loads_completely(model: HealthGPT) -> None:
    for name, report in model.load_reports.items():
        assert report.ok, name
        assert report.loaded == 52  # 4 layers x 4 targets x (A, B, route) + 4 projector tensors
    assert set(model.overrides) == {"generation", "comprehension-fused"}  # the fusion file's tables
    assert len(model.tokenizer) == 1078 and model.tokenizer.token_to_id("<idx_0>") == 1012


@pytest.mark.parametrize("case", sorted(CASES))
def test_prompt_ids_and_greedy_output(case: str, model: HealthGPT, image, official_tiny: Path) -> None:
    plugin, uses_image = CASES[case]
    expected = _expected(official_tiny, case)
    prompt = model.prompt_for(expected["question"], uses_image, plugin)
    assert prompt == expected["prompt"]
    assert model.input_ids(prompt) == expected["input_ids"]
    answer = model.ask(
        expected["question"], image if uses_image else None, plugin, len(expected["output_ids"])
    )
    assert answer.token_ids == expected["output_ids"]
    assert model.tokenizer.decode(answer.token_ids) == expected["decoded_raw"]
    if "decoded_skip_special_tokens" in expected:
        assert (
            model.tokenizer.decode(answer.token_ids, skip_special_tokens=True)
            == expected["decoded_skip_special_tokens"]
        )
        # The official post-processing (`[:-8]`, meant for a trailing " <|end|>") applied to our decode
        # gives the official string: the decode is identical; we just do not chop real text ourselves.
        assert (
            model.tokenizer.decode(answer.token_ids, skip_special_tokens=True)[:-8]
            == expected["response_official"]
        )
    else:
        assert model.vq_indices(answer.token_ids) == expected["vq_index_of_output_token"]
        official = [int(d) for d in re.findall(r"\d+", model.tokenizer.decode(answer.token_ids)[:-8])]
        assert official == expected["response_indices_official"]  # the official parse loses the last one


@pytest.mark.parametrize("products", ["official", "served"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_teacher_forced_logits_and_logprobs(
    case: str, products: str, model: HealthGPT, official_products: HealthGPT, image, official_tiny: Path
) -> None:
    model = official_products if products == "official" else model
    assert not official_products.onednn
    plugin, uses_image = CASES[case]
    expected = _expected(official_tiny, case)
    if case == "gen":
        answer = "".join(f"<idx_{k}>" for k in expected["tf_vq_indices"]) + "<end_index>"
        ids_key, positions_key, logprobs_key = (
            "tf_target_token_ids",
            "tf_target_positions_in_logits",
            "tf_target_logprobs",
        )
    else:
        answer = expected["answer"]
        ids_key, positions_key, logprobs_key = (
            "answer_token_ids",
            "answer_positions_in_logits",
            "answer_token_logprobs",
        )
    picture = image if uses_image else None
    logits, answer_ids, positions = model.teacher_forced_logits(expected["question"], answer, picture, plugin)
    assert answer_ids == expected[ids_key]
    assert positions == expected[positions_key]
    reference = np.load(official_tiny / case / "expected_logits.npy")
    assert logits.shape == reference.shape
    deviation = float(np.abs(logits.numpy() - reference).max())
    print(f"{case} ({products} products): max |logit - official| = {deviation:.3g}")
    assert deviation <= LOGITS_ATOL
    score = model.score(expected["question"], answer, picture, plugin)
    np.testing.assert_allclose(score.logprobs, expected[logprobs_key], rtol=0, atol=1e-3)


@pytest.mark.parametrize("case", ["com_image", "gen"])
def test_vision_path(case: str, model: HealthGPT, image, official_tiny: Path) -> None:
    plugin, _ = CASES[case]
    pixels = model.pixel_values(image)
    np.testing.assert_allclose(
        pixels.numpy(), np.load(official_tiny / case / "pixel_values.npy"), rtol=0, atol=1e-5
    )
    layer = model.spec.plugins[plugin].vision_layer
    features = model.vision_features(pixels, [layer])[layer]
    np.testing.assert_allclose(
        features.numpy(), np.load(official_tiny / case / "vision_features.npy"), rtol=0, atol=1e-4
    )
    projected = model.image_features(image, plugin)
    np.testing.assert_allclose(
        projected.numpy(), np.load(official_tiny / case / "projected_image_features.npy"), rtol=0, atol=1e-4
    )


def test_mixed_plugin_left_padded_batch_equals_single_runs(
    model: HealthGPT, image, official_tiny: Path
) -> None:
    requests, expected_ids = [], []
    for case in ("com_text", "gen", "com_image_fusion", "com_image"):
        plugin, uses_image = CASES[case]
        expected = _expected(official_tiny, case)
        requests.append(
            GenerationRequest(
                expected["question"], image if uses_image else None, plugin, len(expected["output_ids"])
            )
        )
        expected_ids.append(expected["output_ids"])
    answers = model.generate(requests)
    assert len({a.prompt_tokens for a in answers}) > 1  # rows really are padded to different lengths
    assert [a.token_ids for a in answers] == expected_ids


def test_constrained_generation_fills_the_grid(model: HealthGPT, image) -> None:
    (answer,) = model.generate(
        [GenerationRequest("Reconstruct the image.", image, "generation", 40, constrain_vq=32)]
    )
    assert len(model.vq_indices(answer.token_ids)) == 32
    assert answer.token_ids[32] == model.tokenizer.token_to_id("<end_index>")


def test_missing_model_folder_is_named(official_tiny: Path, tmp_path: Path) -> None:
    spec = ModelSpec.from_yaml(official_tiny / "healthgpt.yaml")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        HealthGPT(spec.model_copy(update={"backbone": tmp_path / "nowhere"}))
    plugin = spec.plugins["comprehension"].model_copy(update={"weights": [tmp_path / "absent.bin"]})
    with pytest.raises(FileNotFoundError, match=r"absent\.bin"):
        HealthGPT(spec.model_copy(update={"plugins": {"comprehension": plugin}}))


def test_official_bin_files_load_with_weights_only(official_tiny: Path) -> None:
    from models.weights import read_state_dict

    state = read_state_dict(official_tiny / "com_hlora_weights.bin")
    assert len(state) == 52 and all(isinstance(v, torch.Tensor) for v in state.values())
