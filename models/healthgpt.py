"""HealthGPT: one LLM backbone, a CLIP tower, and every H-LoRA plugin resident at once.

Each plugin brings its own H-LoRA weights, its own ``mlp2x_gelu`` projector and its CLIP layer
(hierarchical visual perception: a deep layer for comprehension, a shallow one for generation).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessorPil, CLIPVisionModel

from models.hlora import HLoRALinear, wrap_linears
from models.spec import ModelSpec, PluginSpec
from models.templates import IMAGE_PLACEHOLDER, get_template, user_message
from models.weights import LoadReport, read_state_dict, strip_official_prefix

# Linear layers the official code adapts, per backbone architecture (lm_head never).
HLORA_TARGETS: dict[str, set[str]] = {
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
}
GENERATION_PROMPT_SUFFIX = "<start_index>"


def build_projector(vision_width: int, hidden: int) -> nn.Sequential:
    """``mlp2x_gelu``: Linear -> exact GELU -> Linear (state keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(nn.Linear(vision_width, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side so the image is square, the original centred (as the official code)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: list[int]
    plugin: str
    prompt_tokens: int
    seconds: float


class HealthGPT:
    """Loads a :class:`ModelSpec` and answers one request at a time (the batching engine is issue 6)."""

    def __init__(self, spec: ModelSpec, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = getattr(torch, spec.dtype)
        self.template = get_template(spec.template)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.backbone)
        self.llm = AutoModelForCausalLM.from_pretrained(spec.backbone, dtype=self.dtype)
        arch = self.llm.config.model_type
        if arch not in HLORA_TARGETS:
            raise ValueError(f"unsupported backbone architecture {arch!r}")
        if self.llm.get_input_embeddings().num_embeddings < len(self.tokenizer):
            raise ValueError(
                f"backbone has {self.llm.get_input_embeddings().num_embeddings} embeddings but the "
                f"tokenizer has {len(self.tokenizer)} tokens"
            )
        self.vision = CLIPVisionModel.from_pretrained(spec.vision_tower, dtype=self.dtype)
        # The PIL processor is the official path (bicubic PIL resize); it needs no torchvision.
        self.image_processor = CLIPImageProcessorPil.from_pretrained(spec.vision_tower)
        self.image_fill = tuple(int(m * 255) for m in self.image_processor.image_mean)
        self.layers: dict[str, HLoRALinear] = wrap_linears(self.llm, HLORA_TARGETS[arch])
        self.projectors = nn.ModuleDict()
        self.load_reports: dict[str, LoadReport] = {}
        for name, plugin in spec.plugins.items():
            self._add_plugin(name, plugin)
        self.llm.to(self.device).eval()
        self.vision.to(self.device).eval()
        self.projectors.to(device=self.device, dtype=self.dtype).eval()
        self.eos_token_ids = self._eos_token_ids()
        # One request at a time: the active plugin is model-wide state until per-row plugins land.
        self._lock = threading.Lock()

    def _eos_token_ids(self) -> list[int]:
        ids = self.llm.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        end = self.tokenizer.convert_tokens_to_ids(self.template.sep)
        if isinstance(end, int) and end not in ids and end != self.tokenizer.unk_token_id:
            ids.append(end)
        if not ids:
            raise ValueError("the backbone names no end-of-sequence token")
        return ids

    def _add_plugin(self, name: str, plugin: PluginSpec) -> None:
        for layer in self.layers.values():
            layer.add_plugin(name, plugin.r, plugin.alpha, plugin.experts)
        self.projectors[name] = build_projector(
            self.vision.config.hidden_size, self.llm.config.hidden_size
        ).to(self.dtype)
        if plugin.weights:
            report = self.load_plugin_weights(name, plugin)
            report.raise_if_incomplete()
            self.load_reports[name] = report

    def _plugin_parameters(self, name: str) -> dict[str, nn.Parameter]:
        """Plugin parameters under the official (prefix-stripped) key names."""
        params: dict[str, nn.Parameter] = {}
        for layer_name, layer in self.layers.items():
            plugin = layer.plugins[name]
            for part in ("lora_A", "lora_B", "lora_route"):
                params[f"{layer_name}.{part}.weight"] = getattr(plugin, part).weight
        for key, param in self.projectors[name].named_parameters():
            params[f"model.mm_projector.{key}"] = param
        return params

    @torch.no_grad()
    def load_plugin_weights(self, name: str, plugin: PluginSpec) -> LoadReport:
        """Copy the plugin's files (in order, later files win) into its parameters; audit every key."""
        targets = self._plugin_parameters(name)
        report = LoadReport(plugin=name, files=[str(p) for p in plugin.weights])
        seen: set[str] = set()
        for path in plugin.weights:
            for raw_key, tensor in read_state_dict(path).items():
                key = strip_official_prefix(raw_key)
                target = targets.get(key)
                if target is None:
                    report.unexpected.append(raw_key)
                    continue
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"{path.name}: {raw_key} has shape {tuple(tensor.shape)}, "
                        f"the model expects {tuple(target.shape)}"
                    )
                target.copy_(tensor.to(target.dtype))
                seen.add(key)
        report.loaded = len(seen)
        report.missing = sorted(set(targets) - seen)
        return report

    def _set_plugin(self, name: str | None) -> None:
        for layer in self.layers.values():
            layer.active = name

    @torch.no_grad()
    def image_features(self, image: Image.Image, plugin: str) -> torch.Tensor:
        """Projected patch features ``[1, patches, hidden]`` from the plugin's CLIP layer."""
        square = expand_to_square(image.convert("RGB"), self.image_fill)
        pixels = self.image_processor(images=square, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        hidden = self.vision(pixels, output_hidden_states=True).hidden_states
        patches = hidden[self.spec.plugins[plugin].vision_layer][:, 1:]  # drop CLS
        return self.projectors[plugin](patches)

    def prompt_for(self, question: str, has_image: bool, plugin: str) -> str:
        suffix = GENERATION_PROMPT_SUFFIX if self.spec.plugins[plugin].task == "generation" else ""
        return self.template.prompt(user_message(question, has_image), suffix)

    def _prompt_embeddings(self, prompt: str, image_features: torch.Tensor | None) -> torch.Tensor:
        chunks = prompt.split(IMAGE_PLACEHOLDER)
        if (image_features is None) != (len(chunks) == 1):
            raise ValueError("the prompt must hold exactly one image placeholder when an image is given")
        embed = self.llm.get_input_embeddings()
        pieces: list[torch.Tensor] = []
        for index, chunk in enumerate(chunks):
            # Only the first chunk carries the tokenizer's BOS (if it adds one).
            ids = self.tokenizer(chunk, add_special_tokens=index == 0)["input_ids"]
            if index > 0:
                pieces.append(image_features[0])
            if ids:
                pieces.append(embed(torch.tensor(ids, device=self.device)))
        return torch.cat(pieces, dim=0).unsqueeze(0)

    @torch.no_grad()
    def ask(
        self,
        question: str,
        image: Image.Image | None = None,
        plugin: str = "comprehension",
        max_new_tokens: int = 64,
    ) -> Answer:
        if plugin not in self.spec.plugins:
            raise ValueError(f"unknown plugin {plugin!r}; this model has {sorted(self.spec.plugins)}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        started = time.perf_counter()
        with self._lock:
            self._set_plugin(plugin)
            try:
                features = self.image_features(image, plugin) if image is not None else None
                embeds = self._prompt_embeddings(
                    self.prompt_for(question, image is not None, plugin), features
                )
                output = self.llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=self.eos_token_ids,
                    pad_token_id=self.eos_token_ids[0],
                )
            finally:
                self._set_plugin(None)
        token_ids = output[0].tolist()  # generate() with inputs_embeds returns only the new tokens
        answer_ids = token_ids
        for position, token in enumerate(token_ids):
            if token in self.eos_token_ids:
                answer_ids = token_ids[:position]
                break
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
        return Answer(
            text=text,
            token_ids=token_ids,
            plugin=plugin,
            prompt_tokens=embeds.shape[1],
            seconds=time.perf_counter() - started,
        )
