"""The contract between a model and the batching engine: the one request type and what the engine calls.

Free of torch at import (annotations only), so clients and settings can name a request without loading
the model stack. :class:`models.healthgpt.HealthGPT` implements :class:`BatchModel`;
:class:`models.engine.BatchEngine` uses nothing else of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers.cache_utils import Cache

    from models.spec import ModelSpec, PluginSpec
    from models.weights import LoadReport


@dataclass
class GenerationRequest:
    """One request: a question (with an optional image) for one plugin, answered greedily."""

    question: str
    image: Image.Image | None = None
    plugin: str = "comprehension"
    max_new_tokens: int = 64
    _: KW_ONLY
    stop: Sequence[str] = ()  # end the answer before the first of these (the engine applies them)
    constrain_vq: int | None = None  # generate exactly this many VQ tokens, then <end_index>


class BatchModel(Protocol):
    """What :class:`models.engine.BatchEngine` needs of a model. Every row of a batch names its plugin.

    ``forward`` is safe to call from several threads (the model serialises what must be); the rest are
    stateless with respect to the model.
    """

    spec: ModelSpec  # plugins now loaded, and the adapter version of the spec's own
    device: torch.device
    eos_token_ids: list[int]

    def embed_prompt(self, question: str, image: Image.Image | None, plugin: str) -> torch.Tensor:
        """``[length, hidden]``: the templated prompt, embedded, with the image's features spliced in."""
        ...

    def left_padded(self, rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt rows as one left-padded batch: embeddings, attention mask, per-row positions."""
        ...

    def embed_step(self, tokens: Sequence[int], plugins: Sequence[str]) -> torch.Tensor:
        """``[batch, 1, hidden]``: each row's last chosen token, embedded with its plugin's table."""
        ...

    def forward(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        plugins: Sequence[str],
        cache: Cache | None,
        positions: torch.Tensor,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[batch, length, vocab]`` of one step over the batch, extending ``cache`` if given
        (any transformers ``Cache``: the engine passes a :class:`models.kv_cache.SlotCache`); with
        ``last_only``, of the last position only. ``mask``: the 2-D padding mask ``[batch, keys]``, or a
        prepared 4-D additive one ``[batch, 1, length, keys]`` (a fixed-shape step, models.decode_graph)."""
        ...

    def choose_tokens(
        self, logits: torch.Tensor, rows: Sequence[tuple[int | None, list[int]]]
    ) -> list[tuple[int, float]]:
        """Each row's next token and its log-probability, given the rows' last logits ``[rows, vocab]``
        and per row (constrain_vq, the tokens so far)."""
        ...

    def decode_text(self, token_ids: list[int]) -> str:
        """The answer text of generated ids: up to the first end token, special tokens dropped."""
        ...

    def add_plugin(self, name: str, plugin: PluginSpec) -> LoadReport: ...

    def remove_plugin(self, name: str) -> None: ...
