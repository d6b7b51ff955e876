"""Random weights at the true shapes of the released HealthGPT models, in their on-disk formats.

Performance at a 64-wide toy model measures Python overhead, not arithmetic. The released checkpoints
cannot be downloaded here, so benchmarks build a model of the same shapes from random numbers: the
backbone's real hidden size, heads, intermediate size and vocabulary (with the 8,195 VQ tokens the loader
adds), the CLIP ViT-L/14-336 tower, the plugins at their real ranks under the official key names (and, for
M3's generation plugin, a fusion file with its own embedding and output-head tables), and the released
VQGAN's shape. ``layers`` keeps the width and drops depth, so a CPU can run it; a GPU runs full depth.
The answers are noise; the spec says ``demo_weights: true``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, GenerationConfig
from transformers.initialization import no_init_weights

from models.healthgpt import EMBED_KEY, HEAD_KEY, vq_token_names
from models.spec import ModelSpec, PluginSpec
from models.tiny import (
    ARCHITECTURES,
    SPEC_FILE,
    VQGAN_DIR,
    PluginInit,
    build_tokenizer,
    random_plugin_state,
    write_tiny_vqgan,
)
from models.vqgan import VQGANConfig
from models.weights import OFFICIAL_PREFIX

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INIT_STD = 0.02  # the backbones' initializer_range: activations stay finite through every layer


@dataclass(frozen=True)
class Backbone:
    arch: str  # a key of models.tiny.ARCHITECTURES
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    config_vocab: int  # the checkpoint's embedding rows
    tokenizer_size: int  # tokens the released tokenizer has (before the VQ tokens are added)
    specials: tuple[str, ...]  # chat tokens of the template, part of tokenizer_size
    max_positions: int
    rope_theta: float = 10_000.0


@dataclass(frozen=True)
class Plugin:
    task: str
    files: tuple[str, ...]  # the released file names; a second file is the fusion (tables) file
    r: int
    alpha: int
    experts: int
    vision_layer: int


@dataclass(frozen=True)
class Preset:
    name: str
    backbone: Backbone
    template: str
    vq_tokens: int
    plugins: dict[str, Plugin]
    vqgan: VQGANConfig | None
    vision: dict = field(
        default_factory=lambda: {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        }
    )


_PHI3 = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
_PHI4 = ("<|im_start|>", "<|im_sep|>", "<|im_end|>")
_QWEN = ("<|im_start|>", "<|im_end|>")
# The released taming GumbelVQ (OpenImages f=8, 8192 codes), ckpt/model.yaml of the official repo.
RELEASED_VQGAN = VQGANConfig(
    embed_dim=256,
    n_embed=8192,
    ch=128,
    ch_mult=(1, 1, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(32,),
    z_channels=256,
    resolution=256,
    double_z=False,
)

PRESETS: dict[str, Preset] = {
    "m3": Preset(
        name="healthgpt-m3",
        # Phi-3-mini-4k-instruct: 32,000 SentencePiece + 11 chat tokens in the tokenizer, 32,064 rows.
        backbone=Backbone("phi3", 3072, 8192, 32, 32, 32, 32064, 32011, _PHI3, 4096),
        template="phi3_instruct",
        vq_tokens=8192,
        plugins={
            "comprehension": Plugin("comprehension", ("com_hlora_weights.bin",), 64, 128, 4, -2),
            "generation": Plugin(
                "generation", ("gen_hlora_weights.bin", "fusion_layer_weights.bin"), 256, 512, 4, 1
            ),
        },
        vqgan=RELEASED_VQGAN,
    ),
    "l14": Preset(
        name="healthgpt-l14",
        # Phi-4: 100,352 rows, grouped-query attention (10 KV heads).
        backbone=Backbone("phi3", 5120, 17920, 40, 40, 10, 100352, 100352, _PHI4, 16384, 250_000.0),
        template="phi4_instruct",
        vq_tokens=8192,
        plugins={"comprehension": Plugin("comprehension", ("com_hlora_weights_phi4.bin",), 32, 64, 4, -2)},
        vqgan=None,
    ),
    "xl32": Preset(
        name="healthgpt-xl32",
        # Qwen2.5-32B-Instruct: 152,064 rows, 8 KV heads, q/k/v with biases; no VQ tokens are added.
        backbone=Backbone("qwen2", 5120, 27648, 64, 40, 8, 152064, 151665, _QWEN, 32768, 1_000_000.0),
        template="qwen_2",
        vq_tokens=0,
        plugins={
            "comprehension": Plugin("comprehension", ("com_hlora_weights_QWEN_32B.bin",), 32, 64, 4, -2)
        },
        vqgan=None,
    ),
}


@contextmanager
def _default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (no float32 copy of a multi-GB model first)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator, std: float) -> torch.Tensor:
    """N(0, std) on the CPU, drawn where the generator lives (a GPU draws billions of numbers in moments)."""
    return (torch.randn(shape, generator=generator, device=generator.device) * std).cpu()


@torch.no_grad()
def _fill(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights ~ N(0, INIT_STD); biases 0; norm scales 1. Every parameter is written: under
    ``no_init_weights`` even LayerNorm's own reset is skipped, leaving whatever memory held."""
    for name, param in module.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif "norm" in name:  # RMSNorm / LayerNorm scales (CLIP spells one "pre_layrnorm")
            param.fill_(1.0)
        else:
            # Drawn in float32 and cast: one generator stream whatever the dtype, and CPU normal_ has no
            # half-precision kernel everywhere.
            param.copy_(_randn(param.shape, generator, INIT_STD))


def _plugin_init(generator: torch.Generator, dtype: torch.dtype) -> PluginInit:
    """Released-like scales: A keeps activations at unit scale, B and the router small, like trained ones."""
    return PluginInit(
        draw=lambda shape, std: _randn(shape, generator, std).to(dtype),
        a_std=lambda fan_in: fan_in**-0.5,
        b_std=lambda rank: INIT_STD / rank**0.5,
        route_std=INIT_STD,
        projector_std=INIT_STD,
        dtype=dtype,
    )


def _fusion_state(rows: int, hidden: int, generator: torch.Generator, dtype: torch.dtype) -> dict:
    """A fusion file: the plugin's own embedding and output-head tables over the grown vocabulary."""
    return {
        OFFICIAL_PREFIX + key: _randn((rows, hidden), generator, INIT_STD).to(dtype)
        for key in (EMBED_KEY, HEAD_KEY)
    }


def build_random(
    preset: str,
    out_dir: Path,
    *,
    layers: int | None = None,
    vision_layers: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    with_vqgan: bool = True,
    draw_on: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a random model of ``preset``'s shapes under ``out_dir`` (atomically); its spec path.

    ``layers``/``vision_layers`` cut depth (None: the released depth); widths never change. ``draw_on``
    ("cpu" or "cuda") is where the random numbers are drawn; a seed gives the same weights per device."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    chosen = PRESETS[preset]
    shape = chosen.backbone
    depth = shape.layers if layers is None else layers
    vision_depth = chosen.vision["num_hidden_layers"] if vision_layers is None else vision_layers
    if depth < 1 or vision_depth < 2:
        raise ValueError("a model needs at least 1 decoder layer and 2 vision layers")
    torch_dtype = DTYPES[dtype]
    say = progress or (lambda _message: None)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    generator = torch.Generator(device=draw_on).manual_seed(seed)
    try:
        say(f"tokenizer ({shape.tokenizer_size:,} tokens)")
        tokenizer = build_tokenizer(staging / "backbone", list(shape.specials), size=shape.tokenizer_size)
        config_class, model_class, _ = ARCHITECTURES[shape.arch]
        eos = [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
        config = config_class(
            vocab_size=shape.config_vocab,
            hidden_size=shape.hidden,
            intermediate_size=shape.intermediate,
            num_hidden_layers=depth,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            max_position_embeddings=shape.max_positions,
            rope_theta=shape.rope_theta,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos[0],
            pad_token_id=eos[0],
            tie_word_embeddings=False,
            torch_dtype=dtype,
        )
        say(f"backbone {shape.arch} {shape.hidden}x{depth} layers ({dtype})")
        with no_init_weights(), _default_dtype(torch_dtype):
            backbone = model_class(config)
        _fill(backbone, generator)
        backbone.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos[0]
        )
        backbone.save_pretrained(staging / "backbone")

        say(f"vision tower CLIP-L/14-336 x{vision_depth} layers")
        vision_config = CLIPVisionConfig(**{**chosen.vision, "num_hidden_layers": vision_depth})
        with no_init_weights(), _default_dtype(torch_dtype):
            tower = CLIPVisionModel(vision_config)
        _fill(tower, generator)
        tower.save_pretrained(staging / "vision")
        size = chosen.vision["image_size"]
        CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ).save_pretrained(staging / "vision")
        del tower

        plugins: dict[str, PluginSpec] = {}
        grown_vocab = shape.tokenizer_size + (
            len(vq_token_names(chosen.vq_tokens)) if chosen.vq_tokens else 0
        )
        for name, plugin in chosen.plugins.items():
            say(f"plugin {name} (rank {plugin.r})")
            init = _plugin_init(generator, torch_dtype)
            state = random_plugin_state(backbone, plugin, chosen.vision["hidden_size"], init)
            torch.save(state, staging / plugin.files[0])
            if len(plugin.files) > 1:
                torch.save(
                    _fusion_state(grown_vocab, shape.hidden, generator, torch_dtype),
                    staging / plugin.files[1],
                )
            plugins[name] = PluginSpec(
                task=plugin.task,  # type: ignore[arg-type]
                weights=[Path(f) for f in plugin.files],
                r=plugin.r,
                alpha=plugin.alpha,
                experts=plugin.experts,
                vision_layer=plugin.vision_layer,
            )
        del backbone

        vqgan = None
        if with_vqgan and chosen.vqgan is not None:
            say("VQGAN (taming GumbelVQ f=8, 8192 codes)")
            write_tiny_vqgan(staging / VQGAN_DIR, seed, chosen.vqgan)
            vqgan = Path(VQGAN_DIR)
        spec = ModelSpec(
            name=f"{chosen.name}-random-{depth}l",
            backbone=Path("backbone"),
            vision_tower=Path("vision"),
            template=chosen.template,  # type: ignore[arg-type]
            vq_tokens=chosen.vq_tokens,
            dtype=dtype,  # type: ignore[arg-type]
            plugins=plugins,
            vqgan=vqgan,
            adapter_version=f"{preset}-random-seed{seed}",
            demo_weights=True,
        )
        spec.to_yaml(staging / SPEC_FILE)
        (staging / "shapes.json").write_text(
            json.dumps(
                {
                    "preset": preset,
                    "layers": depth,
                    "vision_layers": vision_depth,
                    "dtype": dtype,
                    "seed": seed,
                },
                indent=2,
            )
        )
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / SPEC_FILE
