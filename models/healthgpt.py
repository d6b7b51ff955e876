"""HealthGPT: one LLM backbone, a CLIP tower, and every H-LoRA plugin resident at once.

Each plugin brings its own H-LoRA weights, its own ``mlp2x_gelu`` projector, its CLIP layer
(hierarchical visual perception: a deep layer for comprehension, a shallow one for generation) and,
optionally, its own embedding and output-head tables (the official fusion file overrides both). Every
row of a batch names its plugin; rows of different plugins share one forward pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, CLIPImageProcessorPil, CLIPVisionModel, DynamicCache
from transformers.cache_utils import Cache

from models.contract import GenerationRequest
from models.hlora import HLoRALinear, Routing, wrap_linears
from models.kernels import ONEDNN_LINEAR, linear, onednn_for
from models.spec import ModelSpec, PluginSpec
from models.templates import IMAGE_PLACEHOLDER, get_template, user_message
from models.tokenizer import Tokenizer, load_tokenizer
from models.weights import LoadReport, read_state_dict, strip_official_prefix

# Linear layers the official code adapts, per backbone architecture (lm_head never).
HLORA_TARGETS: dict[str, set[str]] = {
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
}
IMAGE_TOKEN_INDEX = -200  # the official placeholder id where image features are spliced in
START_INDEX, END_INDEX, PIXEL_NEWLINE = "<start_index>", "<end_index>", "<pixel_newline>"
EMBED_KEY, HEAD_KEY = "model.embed_tokens.weight", "lm_head.weight"
Attention = Literal["auto", "eager", "sdpa"]


def attention_for(attention: Attention, dtype: torch.dtype, device: torch.device) -> str:
    """The attention kernel: ``auto`` keeps eager attention for float32 on CPU, the configuration the
    official parity fixtures were recorded in (eager is the official code's kernel), and uses PyTorch's
    fused SDPA elsewhere (GPU, half precision), where eager's materialised score matrix costs memory
    bandwidth and nothing is compared bit for bit."""
    if attention != "auto":
        return attention
    return "eager" if dtype == torch.float32 and device.type == "cpu" else "sdpa"


def vq_token_names(count: int) -> list[str]:
    """HealthGPT's added tokens, in the official order (their ids follow the tokenizer's)."""
    return [START_INDEX, *(f"<idx_{k}>" for k in range(count)), END_INDEX, PIXEL_NEWLINE]


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
    token_ids: list[int]  # generated ids only, including the stop token if one ended generation
    plugin: str
    prompt_tokens: int
    seconds: float
    logprobs: list[float] = field(default_factory=list)  # log-probability of each generated id
    adapter_version: str | None = None  # set by the engine: the version that served this request

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability of the answer's tokens: the model's confidence, used to escalate."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


@dataclass(frozen=True)
class Score:
    answer_token_ids: list[int]
    logprobs: list[float]

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))


class HealthGPT:
    """Loads a :class:`ModelSpec`; answers and scores requests, batched across plugins.

    Implements :class:`models.contract.BatchModel`, the public methods the batching engine drives
    (``embed_prompt``, ``left_padded``, ``embed_step``, ``forward``, ``next_token``, ``decode_text``);
    :meth:`generate` is the reference decode loop over the same methods.
    """

    def __init__(
        self,
        spec: ModelSpec,
        device: str | torch.device = "cpu",
        attention: Attention = "auto",
        onednn: bool | None = None,
    ) -> None:
        """``onednn``: inference products through oneDNN (models.kernels); None: for float32 on CPU."""
        self.spec = spec.model_copy(deep=True)  # our own: plugins loaded at runtime are added to it
        self.device = torch.device(device)
        # The spec's dtype as given, on every device: bfloat16/float16 weights run in half precision on a
        # GPU (only log-probabilities are taken in float32).
        self.dtype = getattr(torch, spec.dtype)
        self.attention = attention_for(attention, self.dtype, self.device)
        self.template = get_template(spec.template)
        for path in (spec.backbone, spec.vision_tower):
            if not path.is_dir():
                raise FileNotFoundError(f"model folder not found: {path}")
        self.tokenizer: Tokenizer = load_tokenizer(spec.backbone)
        self.llm = AutoModelForCausalLM.from_pretrained(
            spec.backbone, dtype=self.dtype, attn_implementation=self.attention
        )
        arch = self.llm.config.model_type
        if arch not in HLORA_TARGETS:
            raise ValueError(f"unsupported backbone architecture {arch!r}")
        if spec.template != "qwen_2":  # the official Qwen path adds no VQ tokens
            self._add_vq_tokens(spec.vq_tokens)
        self.vision = CLIPVisionModel.from_pretrained(
            spec.vision_tower, dtype=self.dtype, attn_implementation=self.attention
        )
        # The PIL processor is the official path (bicubic PIL resize); it needs no torchvision.
        self.image_processor = CLIPImageProcessorPil.from_pretrained(spec.vision_tower)
        self.image_fill = tuple(int(m * 255) for m in self.image_processor.image_mean)
        self.layers: dict[str, HLoRALinear] = wrap_linears(self.llm, HLORA_TARGETS[arch])
        self.projectors = nn.ModuleDict()
        self.overrides: dict[str, dict[str, torch.Tensor]] = {}
        self.load_reports: dict[str, LoadReport] = {}
        for name, plugin in spec.plugins.items():
            self._add_plugin(name, plugin)
        self.llm.to(self.device).eval()
        self.vision.to(self.device).eval()
        self.onednn = onednn_for(self.device, self.dtype) if onednn is None else onednn and ONEDNN_LINEAR
        for layer in self.layers.values():
            layer.onednn = self.onednn
        self.projectors.to(device=self.device, dtype=self.dtype).eval()
        self.overrides = {
            name: {k: v.to(device=self.device, dtype=self.dtype) for k, v in tables.items()}
            for name, tables in self.overrides.items()
        }
        self.eos_token_ids = self._eos_token_ids()
        vq_start = self.tokenizer.token_to_id("<idx_0>")
        self.vq_token_ids = (
            torch.arange(vq_start, vq_start + spec.vq_tokens, device=self.device)
            if vq_start is not None
            else None
        )
        # Routing is model-wide state for the duration of one forward pass: forward() holds this lock,
        # so the engine's thread and direct callers (score, generate) may share the model.
        self._routing_lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------------
    @torch.no_grad()
    def _add_vq_tokens(self, count: int) -> None:
        """Add the VQ tokens and give their rows (and every row after the original tokenizer's) the
        mean of the rows before them, in the input embedding and the output head, as the official code."""
        if self.tokenizer.token_to_id(START_INDEX) is not None:
            return
        names = vq_token_names(count)
        self.tokenizer.add_special_tokens(names)
        # mean_resizing=False: the rows are overwritten below (and its covariance fit is slow at 8k rows).
        self.llm.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        for table in (self.llm.get_input_embeddings().weight, self.llm.get_output_embeddings().weight):
            table[-len(names) :] = table[: -len(names)].mean(dim=0, keepdim=True)

    def _eos_token_ids(self) -> list[int]:
        ids = self.llm.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        end = self.tokenizer.token_to_id(self.template.sep.strip())
        if end is not None and end not in ids:
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

    @torch.no_grad()
    def add_plugin(self, name: str, plugin: PluginSpec) -> LoadReport:
        """Load another plugin (e.g. a refreshed adapter version) beside the resident ones.

        Safe while other requests run: only new entries are added, and a forward pass touches only the
        plugins its rows are routed to."""
        if name in self.spec.plugins or name in self.projectors:
            raise ValueError(f"plugin {name!r} is already loaded")
        if not plugin.weights:
            raise ValueError("a runtime plugin needs weight files")
        self._add_plugin(name, plugin)
        self.projectors[name].to(device=self.device, dtype=self.dtype).eval()
        if name in self.overrides:
            self.overrides[name] = {k: v.to(self.device, self.dtype) for k, v in self.overrides[name].items()}
        self.spec.plugins[name] = plugin
        return self.load_reports[name]

    def remove_plugin(self, name: str) -> None:
        """Free a plugin no request uses any more (the caller guarantees that)."""
        if name not in self.spec.plugins:
            raise ValueError(f"unknown plugin {name!r}")
        for layer in self.layers.values():
            del layer.plugins[name]
        del self.projectors[name]
        self.overrides.pop(name, None)
        self.load_reports.pop(name, None)
        del self.spec.plugins[name]

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
        """Copy the plugin's files (in order, later files win) into its parameters; audit every key.

        ``model.embed_tokens.weight`` / ``lm_head.weight`` (the fusion file) become this plugin's own
        tables; the shared base model is never modified."""
        targets = self._plugin_parameters(name)
        tables = {
            EMBED_KEY: self.llm.get_input_embeddings().weight,
            HEAD_KEY: self.llm.get_output_embeddings().weight,
        }
        report = LoadReport(plugin=name, files=[str(p) for p in plugin.weights])
        seen: set[str] = set()
        for path in plugin.weights:
            for raw_key, tensor in read_state_dict(path).items():
                key = strip_official_prefix(raw_key)
                target = targets.get(key) if key not in tables else tables[key]
                if target is None:
                    report.unexpected.append(raw_key)
                    continue
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(
                        f"{path.name}: {raw_key} has shape {tuple(tensor.shape)}, "
                        f"the model expects {tuple(target.shape)}"
                    )
                if key in tables:
                    self.overrides.setdefault(name, {})[key] = tensor.to(self.dtype).clone()
                else:
                    target.copy_(tensor.to(target.dtype))
                    seen.add(key)
        report.loaded = len(seen)
        report.missing = sorted(set(targets) - seen)
        return report

    # -- vision -------------------------------------------------------------------------------------
    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        square = expand_to_square(image.convert("RGB"), self.image_fill)
        pixels = self.image_processor(images=square, return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)

    def _hidden_index(self, layer: int) -> int:
        count = len(self._vision_parts()[2])
        index = layer if layer >= 0 else count + 1 + layer
        if not 0 <= index <= count:
            raise ValueError(f"vision layer {layer} does not exist in a {count}-layer tower")
        return index

    def _vision_parts(self) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
        tower = getattr(self.vision, "vision_model", self.vision)
        return tower.embeddings, tower.pre_layrnorm, tower.encoder.layers

    @torch.no_grad()
    def vision_features(self, pixels: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Patch features (CLS dropped) of each requested hidden-state layer, running the tower only as
        deep as the deepest of them (hidden state k = output of encoder layer k, 0 = embeddings)."""
        embeddings, pre_norm, encoder_layers = self._vision_parts()
        wanted = {layer: self._hidden_index(layer) for layer in layers}
        hidden = pre_norm(embeddings(pixels))
        states = [hidden]
        for encoder_layer in encoder_layers[: max(wanted.values())]:
            hidden = encoder_layer(hidden, None)
            states.append(hidden)
        return {layer: states[index][:, 1:] for layer, index in wanted.items()}

    @torch.no_grad()
    def image_features(self, image: Image.Image, plugin: str) -> torch.Tensor:
        """Projected patch features ``[1, patches, hidden]`` from the plugin's CLIP layer."""
        layer = self.spec.plugins[plugin].vision_layer
        return self.projectors[plugin](self.vision_features(self.pixel_values(image), [layer])[layer])

    # -- prompts ------------------------------------------------------------------------------------
    def prompt_for(self, question: str, has_image: bool, plugin: str) -> str:
        suffix = START_INDEX if self.spec.plugins[plugin].task == "generation" else ""
        return self.template.prompt(user_message(question, has_image), suffix)

    def input_ids(self, prompt: str) -> list[int]:
        """Token ids with one ``IMAGE_TOKEN_INDEX`` per image placeholder; only the first chunk keeps
        the BOS token (the official ``tokenizer_image_token``)."""
        chunks = [self.tokenizer.encode(chunk) for chunk in prompt.split(IMAGE_PLACEHOLDER)]
        bos = self.tokenizer.bos_token_id
        offset = 1 if chunks and chunks[0] and chunks[0][0] == bos and bos is not None else 0
        ids = list(chunks[0])
        for chunk in chunks[1:]:
            ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(chunk[offset:])
        return ids

    def _embed(self, ids: torch.Tensor, plugin: str) -> torch.Tensor:
        table = self.overrides.get(plugin, {}).get(EMBED_KEY)
        return F.embedding(ids, table) if table is not None else self.llm.get_input_embeddings()(ids)

    def _prompt_embeddings(
        self, ids: list[int], image_features: torch.Tensor | None, plugin: str
    ) -> torch.Tensor:
        """``[length, hidden]``: text embeddings with the image features spliced in at the placeholder."""
        placeholders = ids.count(IMAGE_TOKEN_INDEX)
        if placeholders != (0 if image_features is None else 1):
            raise ValueError("the prompt must hold exactly one image placeholder when an image is given")
        if image_features is None:
            return self._embed(torch.tensor(ids, device=self.device), plugin)
        at = ids.index(IMAGE_TOKEN_INDEX)
        before = self._embed(torch.tensor(ids[:at], device=self.device), plugin)
        after = self._embed(torch.tensor(ids[at + 1 :], device=self.device), plugin)
        return torch.cat([before, image_features[0], after], dim=0)

    def embed_prompt(self, question: str, image: Image.Image | None, plugin: str) -> torch.Tensor:
        """``[length, hidden]``: one request's templated prompt, embedded, with its image features."""
        features = self.image_features(image, plugin) if image is not None else None
        ids = self.input_ids(self.prompt_for(question, image is not None, plugin))
        return self._prompt_embeddings(ids, features, plugin)

    def embed_step(self, tokens: Sequence[int], plugins: Sequence[str]) -> torch.Tensor:
        """``[batch, 1, hidden]``: each row's last chosen token, embedded with its plugin's table."""
        if len(set(plugins)) == 1:  # one lookup for the batch (a lookup copies rows: the same numbers)
            return self._embed(torch.tensor(list(tokens), device=self.device), plugins[0]).unsqueeze(1)
        return torch.stack(
            [
                self._embed(torch.tensor([token], device=self.device), plugin)[0]
                for token, plugin in zip(tokens, plugins, strict=True)
            ]
        ).unsqueeze(1)

    def left_padded(self, rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of prompt rows, left-padded: embeddings, attention mask and per-row positions."""
        longest = max(row.shape[0] for row in rows)
        embeds = torch.zeros(len(rows), longest, rows[0].shape[1], dtype=self.dtype, device=self.device)
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            embeds[i, longest - row.shape[0] :] = row
            mask[i, longest - row.shape[0] :] = 1
        return embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    # -- forward ------------------------------------------------------------------------------------
    @contextmanager
    def _routed(self, plugins: Sequence[str]) -> Iterator[None]:
        routing: Routing
        if len(set(plugins)) == 1:
            routing = [(plugins[0], None)]
        else:
            routing = [
                (name, torch.tensor([i for i, p in enumerate(plugins) if p == name], device=self.device))
                for name in dict.fromkeys(plugins)
            ]
        for layer in self.layers.values():
            layer.routing = routing
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.routing = None

    @contextmanager
    def as_single_task(self, plugin: str) -> Iterator[nn.Module]:
        """The Hugging Face causal LM as the official code holds it for one task: every adapted layer
        routed to ``plugin`` and the plugin's own tables (a fusion file) in the embedding and the head.
        For code that drives the HF model itself, e.g. transformers' ``generate()`` in the official-path
        baseline. It holds the routing lock throughout: serving waits meanwhile."""
        if plugin not in self.spec.plugins:
            raise ValueError(f"unknown plugin {plugin!r}; this model has {sorted(self.spec.plugins)}")
        embedding, head = self.llm.get_input_embeddings(), self.llm.get_output_embeddings()
        saved = embedding.weight, head.weight
        tables = self.overrides.get(plugin, {})
        with self._routing_lock, self._routed([plugin]):
            try:
                if EMBED_KEY in tables:
                    embedding.weight = nn.Parameter(tables[EMBED_KEY], requires_grad=False)
                if HEAD_KEY in tables:
                    head.weight = nn.Parameter(tables[HEAD_KEY], requires_grad=False)
                yield self.llm
            finally:
                embedding.weight, head.weight = saved

    def _logits(self, hidden: torch.Tensor, plugins: Sequence[str]) -> torch.Tensor:
        """Each row through its plugin's output head (the base head unless the plugin overrides it)."""
        base = self.llm.get_output_embeddings().weight
        heads = [self.overrides.get(p, {}).get(HEAD_KEY, base) for p in plugins]
        if all(head is heads[0] for head in heads):
            return linear(hidden, heads[0], onednn=self.onednn)
        # One product per distinct head over its rows: the head is the largest weight a decode step reads
        # (40k x 3072 at M3), so reading it once per row would multiply the step's memory traffic.
        by_head: dict[int, tuple[torch.Tensor, list[int]]] = {}
        for i, head in enumerate(heads):
            by_head.setdefault(id(head), (head, []))[1].append(i)
        logits = hidden.new_empty(*hidden.shape[:-1], base.shape[0])
        for head, rows in by_head.values():
            index = torch.tensor(rows, device=hidden.device)
            logits[index] = linear(hidden.index_select(0, index), head, onednn=self.onednn)
        return logits

    def forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        plugins: Sequence[str],
        cache: Cache | None,
        positions: torch.Tensor,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[batch, length, vocab]`` of one step over the batch (a prompt, or one new token per
        row), each row through its plugin; extends ``cache`` when one is given. ``last_only``: logits of
        the last position only (``[batch, 1, vocab]``) — a prompt's other positions are never sampled, and
        at a 40k vocabulary their logits would dwarf the activations. Thread-safe."""
        with self._routing_lock, self._routed(plugins):
            out = self.llm.model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=cache is not None,
            )
        hidden = out.last_hidden_state[:, -1:] if last_only else out.last_hidden_state
        return self._logits(hidden, plugins)

    # -- public API ---------------------------------------------------------------------------------
    def _check(self, plugin: str, max_new_tokens: int, stop: Sequence[str] = ()) -> None:
        if plugin not in self.spec.plugins:
            raise ValueError(f"unknown plugin {plugin!r}; this model has {sorted(self.spec.plugins)}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if stop:  # silently ignoring them would return a different answer than the engine
            raise ValueError("stop strings are applied by the batching engine, not by generate()")

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Answer]:
        """The reference decode loop: greedy, one left-padded batch start to end, each row with its own
        plugin. The parity tests check it against the official code and the batching engine against it;
        serving goes through :class:`models.engine.BatchEngine` (continuous batching, stop strings)."""
        for request in requests:
            self._check(request.plugin, request.max_new_tokens, request.stop)
        started = time.perf_counter()
        rows = [self.embed_prompt(r.question, r.image, r.plugin) for r in requests]
        plugins = [r.plugin for r in requests]
        embeds, mask, positions = self.left_padded(rows)
        cache = DynamicCache(config=self.llm.config)
        logits = self.forward(embeds, mask, plugins, cache, positions)[:, -1]
        outputs: list[list[int]] = [[] for _ in requests]
        chosen_logprobs: list[list[float]] = [[] for _ in requests]
        done = [False] * len(requests)
        limit = max(r.max_new_tokens for r in requests)
        for _ in range(limit):
            chosen = self.choose_tokens(
                logits, [(r.constrain_vq, outputs[i]) for i, r in enumerate(requests)]
            )
            next_ids = [token for token, _ in chosen]
            for i, (token, logprob) in enumerate(chosen):
                if done[i]:
                    continue
                outputs[i].append(token)
                chosen_logprobs[i].append(logprob)
                if token in self.eos_token_ids or len(outputs[i]) >= requests[i].max_new_tokens:
                    done[i] = True
            if all(done):
                break
            step = self.embed_step(next_ids, plugins)
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
            logits = self.forward(step, mask, plugins, cache, positions)[:, -1]
        seconds = time.perf_counter() - started
        return [
            Answer(
                text=self.decode_text(out),
                token_ids=out,
                plugin=r.plugin,
                prompt_tokens=row.shape[0],
                seconds=seconds,
                logprobs=lp,
            )
            for r, out, lp, row in zip(requests, outputs, chosen_logprobs, rows, strict=True)
        ]

    def choose_tokens(
        self, logits: torch.Tensor, rows: Sequence[tuple[int | None, list[int]]]
    ) -> list[tuple[int, float]]:
        """Each row's greedy token and its log-probability from the last logits ``[rows, vocab]``.

        ``rows`` holds (constrain_vq, the tokens so far) per row; with ``constrain_vq``, exactly that many
        VQ tokens, then <end_index>, then the end token. Every row's choice reaches the host in one
        transfer: each transfer waits for the device, so a batch must not pay one per row."""
        modes = [self._choice_mode(constrain_vq, so_far) for constrain_vq, so_far in rows]
        kinds = list(dict.fromkeys(modes))  # the kinds of choice this batch needs, one column each
        candidates = torch.stack([self._candidates(kind, logits) for kind in kinds], dim=1)
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, candidates)
        # float64 holds every token id and every float32 log-probability exactly.
        table = torch.stack([candidates.double(), logprobs.double()], dim=-1).tolist()
        column = {kind: k for k, kind in enumerate(kinds)}
        return [(int(table[i][column[mode]][0]), table[i][column[mode]][1]) for i, mode in enumerate(modes)]

    def _candidates(self, kind: str | int, logits: torch.Tensor) -> torch.Tensor:
        """Every row's choice of one kind: any token, a VQ token, or one given token."""
        if kind == "free":
            return torch.argmax(logits, dim=-1)
        if kind == "vq":
            assert self.vq_token_ids is not None
            return self.vq_token_ids[torch.argmax(logits.index_select(-1, self.vq_token_ids), dim=-1)]
        return torch.full((logits.shape[0],), kind, dtype=torch.long, device=logits.device)

    def _choice_mode(self, constrain_vq: int | None, so_far: list[int]) -> str | int:
        """'free' (any token), 'vq' (a VQ token) or the one token the row must emit next."""
        if constrain_vq is None or self.vq_token_ids is None:
            return "free"
        if len(so_far) < constrain_vq:  # only VQ tokens until the grid is full
            return "vq"
        if len(so_far) == constrain_vq:
            return self.tokenizer.token_to_id(END_INDEX)
        return self.eos_token_ids[-1]

    def decode_text(self, token_ids: list[int]) -> str:
        """The answer text: everything before the first stop token, special tokens dropped."""
        for position, token in enumerate(token_ids):
            if token in self.eos_token_ids:
                token_ids = token_ids[:position]
                break
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    def ask(
        self,
        question: str,
        image: Image.Image | None = None,
        plugin: str = "comprehension",
        max_new_tokens: int = 64,
    ) -> Answer:
        return self.generate([GenerationRequest(question, image, plugin, max_new_tokens)])[0]

    def vq_indices(self, token_ids: Sequence[int]) -> list[int]:
        """VQ codebook indices of the ``<idx_k>`` tokens among ``token_ids`` (others are ignored)."""
        if self.vq_token_ids is None:
            raise ValueError("this model has no VQ tokens")
        start = int(self.vq_token_ids[0])
        return [t - start for t in token_ids if start <= t < start + self.spec.vq_tokens]

    def image_token_count(self, plugin: str = "generation") -> int:
        """How many VQ tokens an image of ``plugin`` takes: the VQGAN grid's cells."""
        if self.spec.plugins.get(plugin) is None or self.spec.plugins[plugin].task != "generation":
            raise ValueError(f"{plugin!r} is not a generation plugin of this model")
        vqgan = self._vqgan()
        if self.spec.vq_tokens > vqgan.n_embed:
            raise ValueError(f"{self.spec.vq_tokens} VQ tokens but the VQGAN codebook has {vqgan.n_embed}")
        return vqgan.grid[0] * vqgan.grid[1]

    @torch.no_grad()
    def image_from_tokens(self, token_ids: Sequence[int]) -> tuple[Image.Image, list[int]]:
        """The VQGAN decode of generated ids, with the official post-processing; and the indices."""
        from models.vqgan import to_uint8_image

        vqgan = self._vqgan()
        indices = self.vq_indices(token_ids)
        return to_uint8_image(vqgan.decode_indices(indices, vqgan.grid)), indices

    @torch.no_grad()
    def generate_image(
        self, instruction: str, image: Image.Image | None = None, plugin: str = "generation"
    ) -> tuple[Image.Image, list[int]]:
        """Image generation: exactly the VQGAN grid's number of VQ tokens (constrained greedy), then the
        VQGAN decode with the official post-processing. Returns the image and its VQ indices."""
        cells = self.image_token_count(plugin)
        (answer,) = self.generate(
            [GenerationRequest(instruction, image, plugin, cells + 2, constrain_vq=cells)]
        )
        return self.image_from_tokens(answer.token_ids)

    def _vqgan(self):
        if self.spec.vqgan is None:
            raise ValueError("this model spec names no vqgan folder")
        if getattr(self, "_vqgan_model", None) is None:
            from models.vqgan import load_vqgan

            self._vqgan_model = load_vqgan(self.spec.vqgan, self.device)
        return self._vqgan_model

    @torch.no_grad()
    def teacher_forced_logits(
        self, question: str, answer: str, image: Image.Image | None = None, plugin: str = "comprehension"
    ) -> tuple[torch.Tensor, list[int], list[int]]:
        """Logits ``[1, length, vocab]`` over prompt + answer + the template's end separator, with the
        answer's token ids and their positions in the embedded sequence."""
        self._check(plugin, 1)
        full_ids, answer_length = self.example_ids(question, answer, image is not None, plugin)
        answer_ids = full_ids[len(full_ids) - answer_length :]
        features = self.image_features(image, plugin) if image is not None else None
        embeds = self._prompt_embeddings(full_ids, features, plugin).unsqueeze(0)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        positions = torch.arange(embeds.shape[1], device=self.device).unsqueeze(0)
        logits = self.forward(embeds, mask, [plugin], None, positions)
        first = embeds.shape[1] - len(answer_ids)
        return logits, answer_ids, list(range(first, embeds.shape[1]))

    def example_ids(self, question: str, answer: str, has_image: bool, plugin: str) -> tuple[list[int], int]:
        """Ids of prompt + answer + the template's end separator (one ``IMAGE_TOKEN_INDEX`` where the image
        goes), and how many of the last ids are the answer's: what teacher forcing scores and trains."""
        prompt = self.prompt_for(question, has_image, plugin)
        prompt_ids = self.input_ids(prompt)
        full_ids = self.input_ids(prompt + answer + self.template.sep)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("the answer changes how the prompt tokenizes; cannot score it")
        return full_ids, len(full_ids) - len(prompt_ids)

    # -- training support ---------------------------------------------------------------------------
    def token_logprobs(
        self, rows: Sequence[tuple[list[int], int, torch.Tensor | None]], plugin: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probabilities ``[batch, longest answer]`` of each row's answer ids, and the
        mask of real ones (padding is 0). A row is (ids and answer length from :meth:`example_ids`, the CLIP
        patch features ``[1, patches, width]`` of its image at the plugin's layer, or None).

        Not under ``no_grad``: gradients reach the plugin's projector, H-LoRA and own tables, so training
        uses it; wrap it in ``torch.no_grad()`` to score."""
        embedded = []
        for ids, _, patches in rows:
            features = None
            if patches is not None:
                features = self.projectors[plugin](patches.to(device=self.device, dtype=self.dtype))
            embedded.append(self._prompt_embeddings(ids, features, plugin))
        embeds, mask, positions = self.left_padded(embedded)
        longest = max(length for _, length, _ in rows)
        with self._routing_lock, self._routed([plugin] * len(rows)):
            out = self.llm.model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
            )
        # Left padding ends every answer at the last position; position p predicts the id at p + 1.
        hidden = out.last_hidden_state[:, -longest - 1 : -1]
        logprobs = torch.log_softmax(self._logits(hidden, [plugin] * len(rows)).float(), dim=-1)
        targets = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        real = torch.zeros(len(rows), longest, dtype=torch.bool, device=self.device)
        for i, (ids, length, _) in enumerate(rows):
            targets[i, longest - length :] = torch.tensor(ids[len(ids) - length :], device=self.device)
            real[i, longest - length :] = True
        chosen = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return chosen * real, real

    def own_tables(self, plugin: str) -> dict[str, torch.Tensor]:
        """The plugin's own embedding and output-head tables (as a fusion file gives them), copied from
        the shared ones the first time: training them never changes the base model other plugins use."""
        tables = self.overrides.setdefault(plugin, {})
        shared = {
            EMBED_KEY: self.llm.get_input_embeddings().weight,
            HEAD_KEY: self.llm.get_output_embeddings().weight,
        }
        for key, table in shared.items():
            if key not in tables:
                tables[key] = table.detach().clone()
        return tables

    def plugin_parameter_groups(self, plugin: str) -> dict[str, dict[str, torch.Tensor]]:
        """The plugin's tensors by role, under official (prefix-stripped) key names: ``hlora`` (A and B of
        every adapted layer), ``router``, ``projector`` and ``tables`` (its own embedding/head, if any)."""
        groups: dict[str, dict[str, torch.Tensor]] = {
            "hlora": {},
            "router": {},
            "projector": {},
            "tables": dict(self.overrides.get(plugin, {})),
        }
        for key, param in self._plugin_parameters(plugin).items():
            if key.startswith("model.mm_projector."):
                groups["projector"][key] = param
            elif key.endswith(".lora_route.weight"):
                groups["router"][key] = param
            else:
                groups["hlora"][key] = param
        return groups

    def score(
        self, question: str, answer: str, image: Image.Image | None = None, plugin: str = "comprehension"
    ) -> Score:
        """Log-probability of each answer token given everything before it (multiple-choice VQA)."""
        logits, answer_ids, positions = self.teacher_forced_logits(question, answer, image, plugin)
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)
        return Score(
            answer_token_ids=answer_ids,
            logprobs=[float(logprobs[p - 1, t]) for p, t in zip(positions, answer_ids, strict=True)],
        )
