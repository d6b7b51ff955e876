"""The batching engine's limits, in a module free of torch so that settings (and every CLI command that
loads them) can hold them without paying torch's import time."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EngineLimits(BaseModel):
    """The batching engine of each HealthGPT replica (``Settings.engine``; :class:`BatchEngine`'s limits)."""

    model_config = ConfigDict(frozen=True)  # shared by the engine thread and its callers

    max_batch: int = Field(default=8, ge=1, description="Rows decoded together.")
    max_queue: int = Field(default=64, ge=1, description="Requests waiting for a row; beyond it, 503.")
    max_prompt_tokens: int = Field(default=4096, ge=16)
    max_new_tokens: int = Field(default=1024, ge=1, description="Cap on generated text tokens.")
    request_timeout_s: float = Field(default=300.0, gt=0)
    prefill_chunk_tokens: int | None = Field(
        default=256,
        ge=16,
        description="Joining prompts are prefilled this many positions at a time (per joining row: a "
        "group of k joiners runs up to k times as many tokens), between decode steps of the running rows, "
        "which then wait at most one chunk per step; None prefills a prompt in one pass.",
    )
    prefill_budget_tokens: int | None = Field(
        default=1024,
        ge=16,
        description="Tokens one prefill chunk may carry across its rows (rows x chunk width): joiners "
        "beyond it wait for the next group, keeping their place at the head of the queue. A prompt's "
        "arithmetic is the same in any group, and on a CPU a group of 15 image prompts prefilled at 60% "
        "of one prompt's tokens per second (bigger activations); the first joiner is always taken. None: "
        "no budget.",
    )
    decode_graphs: bool | None = Field(
        default=None,
        description="Decode steps whose rows share one plugin run at fixed shapes, recorded as CUDA graphs "
        "(models.decode_graph). None: on a CUDA device only; True on a CPU runs the fixed step eagerly.",
    )
    kv_block_tokens: int = Field(
        default=256, ge=16, description="The KV cache grows by whole blocks of this many columns."
    )
