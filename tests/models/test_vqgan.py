"""Our GumbelVQ VQGAN against the official idx2img outputs (shared/fixtures/official-tiny, case vq_decode).

Tolerances are the fixture's: decoded float within 1e-4; uint8 pixels equal up to +-1 on rare values
(truncation at bin edges flips with float32 noise; the official code flips some between thread counts).
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.vqgan import GumbelVQ, VQGANConfig, load_vqgan, to_uint8_image

FLOAT_ATOL = 1e-4
MAX_OFF_BY_ONE_FRACTION = 1e-3


@pytest.fixture(scope="module")
def fixture_dir(official_tiny: Path) -> Path:
    return official_tiny


@pytest.fixture(scope="module")
def vqgan(fixture_dir: Path) -> GumbelVQ:
    return load_vqgan(fixture_dir / "vqgan")


@pytest.fixture(scope="module")
def indices(fixture_dir: Path) -> np.ndarray:
    return np.load(fixture_dir / "vq_decode" / "indices.npy")


@pytest.fixture(scope="module")
def decoded(vqgan: GumbelVQ, indices: np.ndarray) -> torch.Tensor:
    return vqgan.decode_indices(indices, grid=(32, 32))


def _assert_pixels_match(ours: np.ndarray, official: np.ndarray) -> None:
    assert ours.shape == official.shape and ours.dtype == official.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - official.astype(np.int16))
    assert int(diff.max()) <= 1, f"a pixel value differs by {int(diff.max())}"
    off = int((diff == 1).sum())
    assert off <= MAX_OFF_BY_ONE_FRACTION * diff.size, f"{off} of {diff.size} uint8 values off by one"


def test_decode_matches_official_float(fixture_dir: Path, decoded: torch.Tensor) -> None:
    official = np.load(fixture_dir / "vq_decode" / "decoded_float.npy")
    assert decoded.shape == (1, 3, 256, 256) and decoded.dtype == torch.float32
    max_diff = float(np.abs(decoded.numpy() - official).max())
    print(f"vq_decode max |ours - official| = {max_diff:.3g}")
    assert max_diff <= FLOAT_ATOL


def test_uint8_matches_official(fixture_dir: Path, decoded: torch.Tensor) -> None:
    image = to_uint8_image(decoded)
    assert image.mode == "RGB" and image.size == (256, 256)
    _assert_pixels_match(np.asarray(image), np.load(fixture_dir / "vq_decode" / "decoded_uint8.npy"))


def test_png_matches_official(fixture_dir: Path, decoded: torch.Tensor, tmp_path: Path) -> None:
    ours = tmp_path / "out.png"
    to_uint8_image(decoded).save(ours)
    official = np.asarray(Image.open(fixture_dir / "vq_decode" / "decoded.png").convert("RGB"))
    _assert_pixels_match(np.asarray(Image.open(ours).convert("RGB")), official)


def test_uint8_conversion_truncates() -> None:
    # A value landing on 254.87 must become 254 (truncation); -2 clamps to 0 and 2 to 255.
    x = torch.tensor([2 * 254.87 / 255 - 1, -2.0, 2.0]).reshape(3, 1, 1)
    assert np.asarray(to_uint8_image(x)).reshape(-1).tolist() == [254, 0, 255]


def test_indices_accepted_as_list_and_tensor(vqgan: GumbelVQ, indices: np.ndarray) -> None:
    first = vqgan.decode_indices(indices[:16].tolist(), grid=(4, 4))
    again = vqgan.decode_indices(torch.from_numpy(indices[:16]).reshape(4, 4), grid=(4, 4))
    assert first.shape == (1, 3, 32, 32)
    assert torch.equal(first, again)


@pytest.mark.parametrize("count", [0, 1023, 1025])
def test_wrong_index_count_is_rejected(vqgan: GumbelVQ, count: int) -> None:
    with pytest.raises(ValueError, match="exactly 1024"):
        vqgan.decode_indices([0] * count)


@pytest.mark.parametrize("bad", [-1, 64, 10_000])
def test_out_of_range_index_is_rejected(vqgan: GumbelVQ, bad: int) -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 64\)"):
        vqgan.decode_indices([0] * 1000 + [bad] + [0] * 23)


def test_float_indices_are_rejected(vqgan: GumbelVQ) -> None:
    with pytest.raises(ValueError, match="integers"):
        vqgan.decode_indices(torch.zeros(1024))


@pytest.mark.parametrize("missing", ["model.yaml", "last.ckpt"])
def test_missing_file_is_named(fixture_dir: Path, tmp_path: Path, missing: str) -> None:
    folder = tmp_path / "vqgan"
    shutil.copytree(fixture_dir / "vqgan", folder)
    (folder / missing).chmod(0o644)
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_vqgan(folder)


def _folder_with_state(fixture_dir: Path, tmp_path: Path, checkpoint: dict) -> Path:
    folder = tmp_path / "vqgan"
    folder.mkdir()
    shutil.copyfile(fixture_dir / "vqgan" / "model.yaml", folder / "model.yaml")
    torch.save(checkpoint, folder / "last.ckpt")
    return folder


def _official_state(fixture_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(fixture_dir / "vqgan" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


def test_loss_keys_are_ignored_and_listed(fixture_dir: Path, tmp_path: Path) -> None:
    state = _official_state(fixture_dir)
    state["loss.discriminator.main.0.weight"] = torch.zeros(2)
    model = load_vqgan(_folder_with_state(fixture_dir, tmp_path, {"state_dict": state}))
    assert model.ignored_checkpoint_keys == ("loss.discriminator.main.0.weight",)


def test_unexpected_and_missing_keys_are_named(fixture_dir: Path, tmp_path: Path) -> None:
    state = _official_state(fixture_dir)
    del state["decoder.up.3.attn.1.q.bias"]
    state["decoder.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"decoder\.up\.3\.attn\.1\.q\.bias") as info:
        load_vqgan(_folder_with_state(fixture_dir, tmp_path, {"state_dict": state}))
    assert "decoder.extra.weight" in str(info.value)


def test_shape_mismatch_is_named(fixture_dir: Path, tmp_path: Path) -> None:
    state = _official_state(fixture_dir)
    state["quantize.embed.weight"] = torch.zeros(32, 256)
    with pytest.raises(ValueError, match=r"quantize\.embed\.weight"):
        load_vqgan(_folder_with_state(fixture_dir, tmp_path, {"state_dict": state}))


def _fake_class(monkeypatch: pytest.MonkeyPatch, dotted: str, base: type = object) -> type:
    """A class that pickles under the global name ``dotted`` (its module exists only while saving)."""
    module_name, _, class_name = dotted.rpartition(".")
    cls = type(class_name, (base,), {"__module__": module_name})
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    setattr(sys.modules[module_name], class_name, cls)
    return cls


def test_lightning_bookkeeping_globals_load_without_running_them(
    fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint_cls = _fake_class(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
    callback = checkpoint_cls()
    callback.best_model_path = "logs/last.ckpt"
    state = _official_state(fixture_dir)
    ckpt = {"state_dict": state, "callbacks": {checkpoint_cls: {"best": callback}}, "epoch": 3}
    folder = _folder_with_state(fixture_dir, tmp_path, ckpt)
    monkeypatch.undo()  # the class is gone: loading must not need (or import) it
    model = load_vqgan(folder)
    assert torch.equal(model.quantize.embed.weight, state["quantize.embed.weight"])


def test_other_foreign_globals_are_refused(
    fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload_cls = _fake_class(monkeypatch, "somepkg.payload.Payload")
    ckpt = {"state_dict": _official_state(fixture_dir), "extra": payload_cls()}
    folder = _folder_with_state(fixture_dir, tmp_path, ckpt)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"somepkg\.payload\.Payload"):
        load_vqgan(folder)


def test_fixture_vqgan_cannot_encode(vqgan: GumbelVQ) -> None:
    # embed_dim 256 != z_channels 32: quant_conv's output does not fit quantize.proj (as in taming).
    with pytest.raises(ValueError, match="cannot encode"):
        vqgan.encode_to_indices(torch.zeros(1, 3, 256, 256))


def test_encode_then_decode_shapes() -> None:
    torch.manual_seed(0)
    cfg = VQGANConfig(
        embed_dim=32,
        n_embed=16,
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(16,),
        z_channels=32,
        resolution=32,
        double_z=False,
    )
    model = GumbelVQ(cfg).eval()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    codes = model.encode_to_indices(image)
    assert codes.shape == (16, 16) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    assert torch.equal(codes, model.encode_to_indices(image[0]))  # deterministic, unbatched ok
    assert model.decode_indices(codes, grid=(16, 16)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="multiples of 2"):
        model.encode_to_indices(torch.zeros(1, 3, 31, 32))


def test_unrebuildable_bookkeeping_is_a_clear_error(
    fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dict subclass (Lightning's AttributeDict hparams) cannot be rebuilt by the weights_only unpickler.
    hparams_cls = _fake_class(monkeypatch, "pytorch_lightning.utilities.parsing.AttributeDict", base=dict)
    ckpt = {"state_dict": _official_state(fixture_dir), "hyper_parameters": hparams_cls(lr=1.0)}
    folder = _folder_with_state(fixture_dir, tmp_path, ckpt)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cannot be read with weights_only"):
        load_vqgan(folder)
