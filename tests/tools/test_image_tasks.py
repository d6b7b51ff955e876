"""Image tasks on the default (tiny) profile: the tiny model ships a tiny VQGAN, so every task makes a
picture out of the box; a task that cannot run is refused when the request is made, naming the field."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError

from models.healthgpt import HealthGPT
from models.spec import ModelSpec
from models.tiny import SPEC_FILE, TINY_VQGAN, VQGAN_DIR, build_tiny
from models.vqgan import load_vqgan
from tools.healthgpt import ImageRequest, ImageTask, InProcessHealthGPT


def _png(color: tuple[int, int, int] = (90, 60, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_tiny_model_names_a_loadable_taming_vqgan(tiny_spec: ModelSpec) -> None:
    assert tiny_spec.vqgan is not None and (tiny_spec.vqgan / "model.yaml").is_file()
    vqgan = load_vqgan(tiny_spec.vqgan)
    assert vqgan.config == TINY_VQGAN
    assert vqgan.grid == (32, 32) and vqgan.n_embed >= tiny_spec.vq_tokens  # the released grid
    picture = vqgan.decode_indices(list(range(64)) * 16)
    assert picture.shape == (1, 3, 256, 256) and torch.isfinite(picture).all()
    assert vqgan.encode_to_indices(torch.zeros(1, 3, 64, 64)).shape == (8, 8)


@pytest.fixture(scope="module")
def client(tiny_model: HealthGPT):
    healthgpt = InProcessHealthGPT(tiny_model)
    yield healthgpt
    healthgpt.close()


@pytest.mark.parametrize("task", list(ImageTask))
def test_every_image_task_makes_a_picture_on_the_tiny_model(
    client: InProcessHealthGPT, task: ImageTask
) -> None:
    """Was a 500 on the default profile: "this model spec names no vqgan folder"."""
    if task is ImageTask.text_to_image:
        request = ImageRequest(task=task, instruction="A chest X-ray with no findings.")
    else:
        request = ImageRequest(task=task, image=_png())
    result = client.generate_image(request)
    assert len(result.vq_indices) == 32 * 32 and all(0 <= i < 64 for i in result.vq_indices)
    with Image.open(io.BytesIO(result.png)) as image:
        assert image.format == "PNG" and image.size == (256, 256)
    assert (result.provenance.plugin, result.provenance.demo_weights) == ("generation", True)


@pytest.mark.parametrize("task", [t for t in ImageTask if t is not ImageTask.text_to_image])
def test_a_task_without_a_source_image_is_refused_naming_the_field(task: ImageTask) -> None:
    """Was a 500 ("needs a source image", a ValueError inside the model call)."""
    with pytest.raises(ValidationError) as caught:
        ImageRequest(task=task)
    (error,) = caught.value.errors()
    assert error["loc"] == ("image",) and "needs a source image" in error["msg"]


def test_text_to_image_needs_an_instruction() -> None:
    with pytest.raises(ValidationError) as caught:
        ImageRequest(task=ImageTask.text_to_image)
    assert caught.value.errors()[0]["loc"] == ("instruction",)
    assert ImageRequest(task=ImageTask.text_to_image, instruction="a knee MRI").prompt() == "a knee MRI"


def test_a_tiny_model_built_before_the_vqgan_gets_one(tmp_path: Path) -> None:
    """Data folders from earlier versions hold a tiny model without a VQGAN: it is added in place, and the
    backbone and plugins stay as they were (the VQGAN has its own random stream)."""
    folder = tmp_path / "tiny-seed0"
    spec_path = build_tiny(folder, seed=0)
    weights = (folder / "generation.safetensors").read_bytes()
    decoder = load_vqgan(folder / VQGAN_DIR).decoder.conv_out.weight.clone()
    raw = yaml.safe_load(spec_path.read_text())
    del raw["vqgan"]
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.rmtree(folder / VQGAN_DIR)

    assert build_tiny(folder, seed=0) == spec_path
    spec = ModelSpec.from_yaml(spec_path)
    assert spec.vqgan == (folder / VQGAN_DIR).resolve()
    assert torch.equal(load_vqgan(spec.vqgan).decoder.conv_out.weight, decoder)  # same seed, same VQGAN
    assert (folder / "generation.safetensors").read_bytes() == weights
    assert not list(folder.glob(f"{SPEC_FILE}.*.part")) and not list(folder.glob(f"{VQGAN_DIR}.*"))
