"""The taming-transformers GumbelVQ VQGAN that turns HealthGPT's generated VQ indices into pixels.

Written from the published architecture (taming ``Encoder``/``Decoder``/``GumbelQuantize``) so that a
taming folder (``model.yaml`` + Lightning ``last.ckpt``) loads without taming, omegaconf or Lightning.
Module attribute names follow the checkpoint's keys, so loading is a direct, audited state-dict map.

Official decode path (``idx2img.py``): indices -> codebook rows laid out as a row-major ``(1, C, h, w)``
grid -> ``post_quant_conv`` -> ``decoder``; then ``custom_to_pil``: clamp to [-1, 1], map to [0, 1],
multiply by 255 and *truncate* to uint8.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import Tensor, nn

CONFIG_FILE = "model.yaml"
CHECKPOINT_FILE = "last.ckpt"
# Keys of the training loss (LPIPS + discriminator) that taming stores next to the autoencoder.
LOSS_PREFIX = "loss."
# Globals a Lightning checkpoint may carry outside ``state_dict`` (callback / hparams bookkeeping).
# They are replaced by inert stand-ins during a weights_only load: none of their code ever runs.
_BOOKKEEPING_PREFIXES = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "omegaconf.",
    "argparse.Namespace",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.dtypes.",
)


@dataclass(frozen=True)
class VQGANConfig:
    """The ``model.params`` of a taming GumbelVQ ``model.yaml`` (only what shapes the network)."""

    embed_dim: int
    n_embed: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    z_channels: int
    resolution: int
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    double_z: bool = True  # taming's Encoder default; GumbelVQ configs set it to false

    @classmethod
    def from_yaml(cls, path: Path) -> VQGANConfig:
        raw = yaml.safe_load(Path(path).read_text())
        try:
            model = raw["model"]
            params = model["params"]
            dd = params["ddconfig"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a taming config (needs model.params.ddconfig)") from exc
        target = model.get("target", "")
        if target and not str(target).endswith("GumbelVQ"):
            raise ValueError(f"{path}: only taming GumbelVQ is supported, got target {target!r}")
        # Options that would change the forward pass and that no GumbelVQ release uses.
        for key, default in (("resamp_with_conv", True), ("give_pre_end", False), ("tanh_out", False)):
            if key in dd and bool(dd[key]) != default:
                raise ValueError(f"{path}: ddconfig {key}={dd[key]!r} is not supported")
        try:
            return cls(
                embed_dim=int(params["embed_dim"]),
                n_embed=int(params["n_embed"]),
                ch=int(dd["ch"]),
                ch_mult=tuple(int(m) for m in dd["ch_mult"]),
                num_res_blocks=int(dd["num_res_blocks"]),
                attn_resolutions=tuple(int(r) for r in dd["attn_resolutions"]),
                z_channels=int(dd["z_channels"]),
                resolution=int(dd["resolution"]),
                in_channels=int(dd.get("in_channels", 3)),
                out_ch=int(dd.get("out_ch", 3)),
                dropout=float(dd.get("dropout", 0.0)),
                double_z=bool(dd.get("double_z", True)),
            )
        except KeyError as exc:
            raise ValueError(f"{path}: missing config entry {exc.args[0]!r}") from exc


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: Tensor) -> Tensor:
    # Spelled out rather than F.silu so the float rounding follows the reference implementation.
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> dropout -> conv3x3, plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions, 1x1 convs for q/k/v/out, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q = self.q(normed).reshape(b, c, h * w).transpose(1, 2)  # (b, hw, c)
        k = self.k(normed).reshape(b, c, h * w)  # (b, c, hw)
        v = self.v(normed).reshape(b, c, h * w)  # (b, c, hw)
        weights = torch.softmax(torch.bmm(q, k) * (c**-0.5), dim=2)  # (b, query, key)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right only (taming's choice)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution of the encoder (``down.i``) or decoder (``up.i``): res blocks, each optionally
    followed by attention, then an optional resampler."""

    def __init__(self, channels: list[tuple[int, int]], with_attn: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin, cout, dropout) for cin, cout in channels)
        self.attn = nn.ModuleList(AttnBlock(cout) for _, cout in channels) if with_attn else nn.ModuleList()

    def run_blocks(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """image (in_channels, R, R) -> latent (z_channels [x2 if double_z], R/2^(L-1), R/2^(L-1))."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, cin = cfg.resolution, cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            cout = cfg.ch * mult
            pairs = [(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)]
            level = _Level(pairs, res in cfg.attn_resolutions, cfg.dropout)
            if i != levels - 1:
                level.downsample = Downsample(cout)
                res //= 2
            self.down.append(level)
            cin = cout
        self.mid = _Middle(cin, cfg.dropout)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """latent (z_channels, h, w) -> image (out_ch, h*2^(L-1), w*2^(L-1)).

    ``up`` is indexed by resolution level like the encoder's ``down`` (``up.0`` is the full-resolution
    level), but runs from the last level to the first; each level has ``num_res_blocks + 1`` blocks.
    """

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        cin = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Middle(cin, cfg.dropout)
        built: list[_Level] = []
        for i in reversed(range(levels)):
            cout = cfg.ch * cfg.ch_mult[i]
            pairs = [(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1)]
            level = _Level(pairs, res in cfg.attn_resolutions, cfg.dropout)
            if i != 0:
                level.upsample = Upsample(cout)
                res *= 2
            built.append(level)
            cin = cout
        self.up = nn.ModuleList(reversed(built))
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class GumbelQuantize(nn.Module):
    """The Gumbel quantiser's parameters: ``proj`` scores each code from the latent, ``embed`` is the
    codebook. Only the deterministic parts are implemented (no Gumbel sampling, see encode_to_indices)."""

    def __init__(self, z_channels: int, embed_dim: int, n_embed: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(z_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)


class GumbelVQ(nn.Module):
    """taming ``GumbelVQ`` for inference: encoder, quant_conv, quantize, post_quant_conv, decoder."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = GumbelQuantize(cfg.z_channels, cfg.embed_dim, cfg.n_embed)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        # Checkpoint keys dropped on load because they belong to the training loss.
        self.ignored_checkpoint_keys: tuple[str, ...] = ()

    @property
    def n_embed(self) -> int:
        return self.config.n_embed

    @property
    def grid(self) -> tuple[int, int]:
        """The latent grid the decoder expects: resolution / 2^(levels - 1) on each side (32 x 32)."""
        side = self.config.resolution // 2 ** (len(self.config.ch_mult) - 1)
        return side, side

    def _check_indices(self, indices: Sequence[int] | Tensor | np.ndarray, grid: tuple[int, int]) -> Tensor:
        rows, cols = (int(g) for g in grid)
        if rows <= 0 or cols <= 0:
            raise ValueError(f"grid must be two positive sizes, got {tuple(grid)}")
        flat = torch.as_tensor(indices).reshape(-1)
        if flat.numel() != rows * cols:
            raise ValueError(
                f"a {rows}x{cols} grid needs exactly {rows * cols} VQ indices, got {flat.numel()}"
            )
        if flat.dtype == torch.bool or flat.is_floating_point() or flat.is_complex():
            raise ValueError(f"VQ indices must be integers, got dtype {flat.dtype}")
        bad = (flat < 0) | (flat >= self.n_embed)
        if bool(bad.any()):
            position = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"VQ index {int(flat[position])} at position {position} is outside [0, {self.n_embed})"
            )
        return flat.to(device=self.quant_conv.weight.device, dtype=torch.long)

    @torch.no_grad()
    def decode_indices(
        self, indices: Sequence[int] | Tensor | np.ndarray, grid: tuple[int, int] = (32, 32)
    ) -> Tensor:
        """Decode ``grid[0] * grid[1]`` codebook indices (row-major raster: index k is row k // cols,
        column k % cols) to an image tensor ``[1, out_ch, H, W]`` float32 in roughly [-1, 1]."""
        rows, cols = (int(g) for g in grid)
        flat = self._check_indices(indices, (rows, cols))
        # A plain row lookup: the official one-hot @ codebook product gives exactly these rows.
        codes = F.embedding(flat, self.quantize.embed.weight)  # (rows*cols, embed_dim)
        z_q = codes.reshape(1, rows, cols, -1).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z_q)).float()

    @torch.no_grad()
    def encode_to_indices(self, image: Tensor) -> Tensor:
        """Indices ``[h, w]`` (long) of an image ``[1, in_channels, H, W]`` (or unbatched) in [-1, 1].

        encoder -> quant_conv -> quantize.proj -> argmax over codes. The official encoder samples
        (gumbel_softmax with hard=True even in eval mode); argmax is its deterministic mode, so indices
        can differ from what the official code would draw. As in taming, ``quant_conv`` feeds
        ``quantize.proj``, which only type-checks when embed_dim == z_channels.
        """
        cfg = self.config
        if cfg.embed_dim != cfg.z_channels:
            raise ValueError(
                f"this VQGAN cannot encode: quant_conv gives embed_dim={cfg.embed_dim} channels but "
                f"quantize.proj expects z_channels={cfg.z_channels} (the taming code fails the same way)"
            )
        if cfg.double_z:
            raise ValueError("this VQGAN cannot encode: double_z=true gives 2*z_channels latent channels")
        x = image.unsqueeze(0) if image.dim() == 3 else image
        factor = 2 ** (len(cfg.ch_mult) - 1)
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected an image [1, {cfg.in_channels}, H, W], got {tuple(image.shape)}")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"image sides must be multiples of {factor}, got {tuple(x.shape[2:])}")
        x = x.to(device=self.quant_conv.weight.device, dtype=self.quant_conv.weight.dtype)
        scores = self.quantize.proj(self.quant_conv(self.encoder(x)))  # (1, n_embed, h, w)
        return scores.argmax(dim=1)[0]


def to_uint8_image(x: Tensor) -> Image.Image:
    """The official ``custom_to_pil`` conversion of a decoded ``[1, 3, H, W]`` (or ``[3, H, W]``)
    tensor: clamp to [-1, 1], (x + 1) / 2, HWC, then ``(255 * x).astype(uint8)``, which truncates."""
    t = x.detach().to("cpu", torch.float32)
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected an RGB image tensor [1, 3, H, W], got {tuple(x.shape)}")
    t = (torch.clamp(t, -1.0, 1.0) + 1.0) / 2.0
    pixels = (255 * t.permute(1, 2, 0).numpy()).astype(np.uint8)
    return Image.fromarray(pixels)


def _read_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a Lightning file whose only foreign globals are training
    bookkeeping (callbacks, hparams) is re-read with inert stand-ins in their place."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first_error:
        try:
            foreign = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (ValueError, RuntimeError) as exc:  # e.g. a legacy (non-zip) file cannot be scanned
            raise ValueError(f"{path}: weights_only load refused it: {first_error}") from exc
        refused = [name for name in foreign if not name.startswith(_BOOKKEEPING_PREFIXES)]
        if not foreign or refused:
            raise ValueError(
                f"{path}: carries globals that are not safe to load: {refused or first_error}"
            ) from first_error
        stand_ins = [(type(f"_StandIn[{name}]", (_InertStandIn,), {}), name) for name in foreign]
        try:
            with torch.serialization.safe_globals(stand_ins):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # e.g. a dict subclass (hparams AttributeDict): weights_only cannot rebuild it at all.
            raise ValueError(f"{path}: cannot be read with weights_only=True: {exc}") from exc


class _InertStandIn:
    """Takes the place of a non-tensor class while unpickling; accepts and discards everything."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _audit_state_dict(model: GumbelVQ, state: Mapping[str, Any], path: Path) -> tuple[str, ...]:
    """Check that ``state`` fills every parameter of ``model`` with the right shape; returns the
    loss/discriminator keys that are ignored. Anything else out of place is a ValueError."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    ignored = tuple(k for k in extra if k.startswith(LOSS_PREFIX))
    unexpected = [k for k in extra if not k.startswith(LOSS_PREFIX)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    not_tensors = sorted(k for k in ours if k in state and not isinstance(state[k], Tensor))
    if not_tensors:
        problems.append(f"non-tensor values for {not_tensors}")
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
        for k in sorted(ours)
        if isinstance(state.get(k), Tensor) and state[k].shape != ours[k].shape
    ]
    if wrong:
        problems.append(f"shape mismatches {wrong}")
    if problems:
        raise ValueError(f"{path} does not match the VQGAN of its model.yaml: " + "; ".join(problems))
    return ignored


def load_vqgan(folder: Path | str, device: str | torch.device = "cpu") -> GumbelVQ:
    """Build the GumbelVQ described by ``folder/model.yaml`` and load ``folder/last.ckpt`` (eval mode,
    float32, gradients off)."""
    folder = Path(folder)
    config_path, ckpt_path = folder / CONFIG_FILE, folder / CHECKPOINT_FILE
    for required in (config_path, ckpt_path):
        if not required.is_file():
            raise FileNotFoundError(f"VQGAN folder {folder} lacks {required.name} ({required})")
    model = GumbelVQ(VQGANConfig.from_yaml(config_path))
    raw = _read_checkpoint(ckpt_path)
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{ckpt_path}: expected a dict with a 'state_dict', got {type(raw).__name__}")
    model.ignored_checkpoint_keys = _audit_state_dict(model, state, ckpt_path)
    model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
