"""`healthagent model ask|score` reproduce the official outputs (the fixture README's call table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from serving.cli import app

runner = CliRunner()


def _run(*args: str) -> dict:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("case", "plugin", "image"),
    [
        ("com_image", "comprehension", True),
        ("com_text", "comprehension", False),
        ("com_image_fusion", "comprehension-fused", True),
    ],
)
def test_ask_and_score(official_tiny: Path, case: str, plugin: str, image: bool) -> None:
    expected = json.loads((official_tiny / case / "expected.json").read_text())
    spec = str(official_tiny / "healthgpt.yaml")
    image_args = ["--image", str(official_tiny / "image.png")] if image else []
    common = ["--spec", spec, "--plugin", plugin, *image_args, "--question", expected["question"]]
    asked = _run("model", "ask", *common, "--max-new-tokens", str(len(expected["output_ids"])), "--json")
    assert asked["token_ids"] == expected["output_ids"]
    scored = _run("model", "score", *common, "--answer", expected["answer"], "--json")
    assert scored["answer_token_ids"] == expected["answer_token_ids"]
    np.testing.assert_allclose(scored["logprobs"], expected["answer_token_logprobs"], rtol=0, atol=1e-3)


def test_gen_case(official_tiny: Path) -> None:
    expected = json.loads((official_tiny / "gen" / "expected.json").read_text())
    common = ["--spec", str(official_tiny / "healthgpt.yaml"), "--plugin", "generation",
              "--image", str(official_tiny / "image.png"), "--question", expected["question"]]  # fmt: skip
    assert (
        _run("model", "ask", *common, "--max-new-tokens", "16", "--json")["token_ids"]
        == expected["output_ids"]
    )
    answer = "".join(f"<idx_{k}>" for k in expected["tf_vq_indices"]) + "<end_index>"
    scored = _run("model", "score", *common, "--answer", answer, "--json")
    assert scored["answer_token_ids"] == expected["tf_target_token_ids"]
    np.testing.assert_allclose(scored["logprobs"], expected["tf_target_logprobs"], rtol=0, atol=1e-3)


def test_bad_inputs_are_clear_errors(official_tiny: Path, tmp_path: Path) -> None:
    spec = str(official_tiny / "healthgpt.yaml")
    not_image = tmp_path / "note.png"
    not_image.write_text("not an image")
    result = runner.invoke(
        app, ["model", "ask", "--spec", spec, "--question", "q", "--image", str(not_image)]
    )
    assert result.exit_code == 2 and "not a readable image" in result.output
    result = runner.invoke(app, ["model", "ask", "--spec", str(tmp_path / "none.yaml"), "--question", "q"])
    assert result.exit_code == 2 and "none.yaml" in result.output
    result = runner.invoke(app, ["model", "ask", "--spec", spec, "--question", "q", "--plugin", "nope"])
    assert result.exit_code == 2 and "unknown plugin" in result.output


def test_vq_decode_matches_the_official_png(official_tiny: Path, tmp_path: Path) -> None:
    from PIL import Image

    indices = tmp_path / "indices.json"
    indices.write_text(json.dumps(np.load(official_tiny / "vq_decode" / "indices.npy").reshape(-1).tolist()))
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["model", "vq-decode", "--vqgan", str(official_tiny / "vqgan"),
                                 "--indices", str(indices), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    ours = np.asarray(Image.open(out)).astype(int)
    theirs = np.asarray(Image.open(official_tiny / "vq_decode" / "decoded.png")).astype(int)
    assert ours.shape == theirs.shape == (256, 256, 3)
    differing = np.abs(ours - theirs)
    assert differing.max() <= 1 and (differing > 0).mean() < 1e-3  # the fixture's own thread-count noise

    indices.write_text(json.dumps([0] * 10))
    result = runner.invoke(app, ["model", "vq-decode", "--vqgan", str(official_tiny / "vqgan"),
                                 "--indices", str(indices), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2 and "1024" in result.output


def test_image_generation_fills_the_grid(official_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen.png"
    payload = _run("model", "image", "--spec", str(official_tiny / "healthgpt.yaml"),
                   "--image", str(official_tiny / "image.png"), "--instruction", "Reconstruct the image.",
                   "--out", str(out), "--json")  # fmt: skip
    assert payload["vq_indices"] == 1024 and payload["size"] == [256, 256]
    assert out.is_file()
