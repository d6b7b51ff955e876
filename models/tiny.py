"""A tiny HealthGPT with random weights, built from a seed, in the same on-disk formats as the released
model (Hugging Face backbone and CLIP folders, plugin weight files under the official key names, a taming
GumbelVQ folder, a spec YAML). It runs everywhere in seconds; its answers and pictures are noise and are
labelled ``demo_weights``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from models.healthgpt import HLORA_TARGETS
from models.spec import ModelSpec, PluginSpec
from models.vqgan import CHECKPOINT_FILE, CONFIG_FILE, GumbelVQ, VQGANConfig
from models.weights import OFFICIAL_PREFIX, write_state_dict

SPEC_FILE = "healthgpt.yaml"
VQGAN_DIR = "vqgan"
PHI3_SPECIAL = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
VQ_TOKENS = 64
# The released GumbelVQ shape (f=8 over four levels, 32x32 grid, 256x256 pixels) at a tiny width, with
# one codebook row per VQ token. embed_dim == z_channels so that encoding works too (taming's quantiser
# only type-checks then). Every image task runs on it out of the box; its pictures are noise.
TINY_VQGAN = VQGANConfig(
    embed_dim=32,
    n_embed=VQ_TOKENS,
    ch=32,
    ch_mult=(1, 1, 1, 1),
    num_res_blocks=1,
    attn_resolutions=(32,),
    z_channels=32,
    resolution=256,
    double_z=False,
)

# A small vocabulary of the field, so the byte-level BPE learns a few real merges.
_CORPUS = [
    "The chest X-ray shows no focal consolidation, effusion or pneumothorax.",
    "MRI of the brain: no acute infarct, haemorrhage or mass effect.",
    "CT abdomen with contrast: the liver, spleen and kidneys are unremarkable.",
    "Patient reports headache, fever and a cough for three days.",
    "Optical coherence tomography of the retina shows normal foveal contour.",
    "Pathology slide: benign tissue without atypia. Impression: normal study.",
    "What does this image show? Describe the findings and the impression.",
]


def build_tokenizer(out_dir: Path, specials: list[str], size: int | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE learnt on a few sentences of the field, with the template's chat tokens added.

    ``size`` (a released tokenizer's length, chat tokens included) pads the vocabulary with tokens no
    merge produces, so embedding tables have the released shape while text still tokenises sensibly."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>", "<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    if size is not None:
        learnt = json.loads(bpe.to_str())
        vocab: dict[str, int] = learnt["model"]["vocab"]
        missing = size - len(specials) - len(vocab)
        if missing < 0:
            raise ValueError(f"a tokenizer of {size} tokens cannot hold the {len(vocab)} learnt ones")
        vocab.update({f"<unused_{i}>": len(vocab) + i for i in range(missing)})
        bpe = Tokenizer.from_str(json.dumps(learnt))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    # Chat tokens are plain added tokens: HealthGPT adds its VQ tokens on load, as with the real Phi-3.
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


@dataclass(frozen=True)
class PluginInit:
    """How a plugin's random tensors are drawn: ``draw(shape, std)`` and the scale of each kind (A's may
    depend on the layer's fan-in, B's on the rank)."""

    draw: Callable[[tuple[int, ...], float], torch.Tensor]
    a_std: Callable[[int], float]  # fan-in -> std
    b_std: Callable[[int], float]  # rank -> std
    route_std: float
    projector_std: float
    dtype: torch.dtype = torch.float32


# The tiny model's scales: large enough that the plugins visibly change its outputs.
TINY_PLUGIN_INIT = PluginInit(
    draw=lambda shape, std: torch.randn(shape) * std,
    a_std=lambda fan_in: 0.1,
    b_std=lambda rank: 0.1,
    route_std=0.1,
    projector_std=0.05,
)


def random_plugin_state(
    backbone: PreTrainedModel, plugin: PluginSpec, vision_width: int, init: PluginInit = TINY_PLUGIN_INIT
) -> dict[str, torch.Tensor]:
    """Plugin tensors under the official key names (every adapted linear layer's A, B and router, then the
    projector), with a non-zero B so the plugin changes outputs as a trained one would."""
    state: dict[str, torch.Tensor] = {}
    targets = HLORA_TARGETS[backbone.config.model_type]
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear):
            key = OFFICIAL_PREFIX + name
            state[f"{key}.lora_A.weight"] = init.draw(
                (plugin.r, module.in_features), init.a_std(module.in_features)
            )
            state[f"{key}.lora_B.weight"] = init.draw((module.out_features, plugin.r), init.b_std(plugin.r))
            state[f"{key}.lora_route.weight"] = init.draw(
                (plugin.experts, module.in_features), init.route_std
            )
    hidden = backbone.config.hidden_size
    projector = {
        "0.weight": init.draw((hidden, vision_width), init.projector_std),
        "0.bias": torch.zeros(hidden, dtype=init.dtype),
        "2.weight": init.draw((hidden, hidden), init.projector_std),
        "2.bias": torch.zeros(hidden, dtype=init.dtype),
    }
    for key, tensor in projector.items():
        state[f"{OFFICIAL_PREFIX}model.mm_projector.{key}"] = tensor
    return state


def _taming_yaml(cfg: VQGANConfig) -> dict:
    """A taming ``model.yaml`` for ``cfg``, as the released VQGAN folders carry it."""
    return {
        "model": {
            "target": "taming.models.vqgan.GumbelVQ",
            "params": {
                "embed_dim": cfg.embed_dim,
                "n_embed": cfg.n_embed,
                "ddconfig": {
                    "double_z": cfg.double_z,
                    "z_channels": cfg.z_channels,
                    "resolution": cfg.resolution,
                    "in_channels": cfg.in_channels,
                    "out_ch": cfg.out_ch,
                    "ch": cfg.ch,
                    "ch_mult": list(cfg.ch_mult),
                    "num_res_blocks": cfg.num_res_blocks,
                    "attn_resolutions": list(cfg.attn_resolutions),
                    "dropout": cfg.dropout,
                },
            },
        }
    }


def write_tiny_vqgan(out_dir: Path, seed: int = 0, config: VQGANConfig = TINY_VQGAN) -> Path:
    """A random GumbelVQ as a taming folder (``model.yaml`` + a Lightning-style ``last.ckpt``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Its own generator state: adding the VQGAN leaves the seeded backbone and plugins as they were.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7919)
        model = GumbelVQ(config)
        with torch.no_grad():  # a visible spread of codebook rows, so decoded indices differ in colour
            model.quantize.embed.weight.normal_(0.0, 1.0)
    (out_dir / CONFIG_FILE).write_text(yaml.safe_dump(_taming_yaml(config), sort_keys=False))
    torch.save({"state_dict": model.state_dict()}, out_dir / CHECKPOINT_FILE)
    return out_dir


def _add_vqgan(out_dir: Path, seed: int) -> None:
    """Give a tiny model built before it had a VQGAN one, so image tasks work on an existing data dir.

    Safe against a concurrent upgrade: the folder appears by rename and the spec by replace."""
    if not (out_dir / VQGAN_DIR / CHECKPOINT_FILE).is_file():
        staging = Path(tempfile.mkdtemp(prefix=VQGAN_DIR + ".", dir=out_dir))
        try:
            write_tiny_vqgan(staging, seed)
            shutil.rmtree(out_dir / VQGAN_DIR, ignore_errors=True)  # a partial folder from a crash
            staging.rename(out_dir / VQGAN_DIR)
        except OSError:
            if not (out_dir / VQGAN_DIR / CHECKPOINT_FILE).is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    spec_path = out_dir / SPEC_FILE
    raw = yaml.safe_load(spec_path.read_text()) or {}
    raw["vqgan"] = VQGAN_DIR
    partial = spec_path.with_name(f"{SPEC_FILE}.{os.getpid()}.part")
    partial.write_text(yaml.safe_dump(raw, sort_keys=False))
    os.replace(partial, spec_path)


# backbone architecture -> (config class, model class, template); Phi-3 is M3/L14's, Qwen2 is XL32's.
ARCHITECTURES = {
    "phi3": (Phi3Config, Phi3ForCausalLM, "phi3_instruct"),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, "qwen_2"),
}


def build_tiny(out_dir: Path, seed: int = 0, arch: str = "phi3") -> Path:
    """Write a complete tiny model under ``out_dir`` (atomically) and return its spec path."""
    config_class, model_class, template = ARCHITECTURES[arch]
    spec_path = out_dir / SPEC_FILE
    if spec_path.is_file():
        if not (yaml.safe_load(spec_path.read_text()) or {}).get("vqgan"):
            _add_vqgan(out_dir, seed)
        return spec_path
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(staging / "backbone", PHI3_SPECIAL)
        eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|assistant|>", "<|end|>")]
        config = config_class(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos[0],
            pad_token_id=eos[0],
            tie_word_embeddings=False,
        )
        backbone = model_class(config)
        backbone.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos[0]
        )
        backbone.save_pretrained(staging / "backbone")

        vision_config = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            projection_dim=32,
        )
        CLIPVisionModel(vision_config).save_pretrained(staging / "vision")
        CLIPImageProcessorPil(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
        ).save_pretrained(staging / "vision")

        plugins = {
            "comprehension": PluginSpec(
                task="comprehension",
                weights=[Path("comprehension.safetensors")],
                r=8,
                alpha=16,
                experts=4,
                vision_layer=-2,
            ),
            "generation": PluginSpec(
                task="generation",
                weights=[Path("generation.safetensors")],
                r=8,
                alpha=16,
                experts=4,
                vision_layer=1,
            ),
        }
        for plugin in plugins.values():
            state = random_plugin_state(backbone, plugin, vision_config.hidden_size)
            write_state_dict(state, staging / plugin.weights[0])
        write_tiny_vqgan(staging / VQGAN_DIR, seed)

        spec = ModelSpec(
            name=f"tiny-seed{seed}",
            backbone=Path("backbone"),
            vision_tower=Path("vision"),
            template=template,
            vq_tokens=VQ_TOKENS,
            dtype="float32",
            plugins=plugins,
            vqgan=Path(VQGAN_DIR),
            adapter_version=f"tiny-seed{seed}-v1",
            demo_weights=True,
        )
        spec.to_yaml(staging / SPEC_FILE)
        if out_dir.exists():  # another process won the race; keep its copy
            shutil.rmtree(staging)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return spec_path


def resolve_spec(model_spec: str, model_dir: Path, seed: int = 0) -> ModelSpec:
    """``'tiny'`` builds (once) and loads the seeded tiny model; anything else is a spec YAML path."""
    if model_spec == "tiny":
        return ModelSpec.from_yaml(build_tiny(model_dir / f"tiny-seed{seed}", seed))
    return ModelSpec.from_yaml(model_spec)
