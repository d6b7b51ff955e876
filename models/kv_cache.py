"""A preallocated KV cache for continuous batching: one slot per row, every row right-aligned.

Why: transformers' ``DynamicCache`` concatenates each layer's keys and values on every decode step, and
the engine used to merge caches on each join by left-padding every running row again — both copy the
whole batch's cache, which at real widths costs as much memory traffic as reading the weights. Here each
layer owns buffers ``[slots, kv_heads, capacity, head_dim]`` allocated once; a step writes only its new
columns and attention reads views of the buffers.

Layout: rows occupy slots ``0 .. rows-1`` and share one window of columns ``[start, end)``; every row's
newest token sits in column ``end - 1`` (rows are right-aligned, shorter ones masked on the left), so one
write column serves all rows and the model's usual 2-D padding mask describes the batch. Operations and
what they copy:

- a step (decode or a prefill chunk) writes ``q`` new columns of every row: nothing else moves;
- a joining row is written into a free slot, right-aligned at ``end``: only its own keys and values;
- a leaving row's slot is refilled by the last slot's row: one row's window per leaver (the caller
  reorders its rows to match);
- leading columns no row attends to are dropped by moving ``start``: nothing moves;
- only when the window reaches the buffer's end (or a joiner needs more room on the left) is the live
  window copied once into fresh buffers with room to spare, so growth costs amortised O(1) per step.

Stale columns left of a row's own tokens are never zeroed: the mask hides them, and buffers start as
zeros so what they hold is always finite (a masked score times a NaN would still be NaN).
"""

from __future__ import annotations

from functools import partial

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


class SlotLayer(CacheLayerMixin):
    """One decoder layer's keys and values inside a :class:`SlotCache` (which owns the geometry)."""

    is_sliding = False
    is_compileable = False

    def __init__(self, owner: SlotCache) -> None:
        super().__init__()
        self.owner = owner
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def allocate(self, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.owner.slots, heads, self.owner.capacity, head_dim)
        self.key_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self.value_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self.dtype, self.device = dtype, device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states.shape[1], key_states.shape[3], key_states.dtype, key_states.device)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's ``q`` columns at the shared write column; return views of the live window."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.key_buffer is not None and self.value_buffer is not None
        owner = self.owner
        rows, q = key_states.shape[0], key_states.shape[2]
        if owner.write_at is not None:  # a fixed-shape step: same addresses and shapes every step
            self.key_buffer[:rows].index_copy_(2, owner.write_at, key_states)
            self.value_buffer[:rows].index_copy_(2, owner.write_at, value_states)
            self.keys, self.values = self.key_buffer[:rows], self.value_buffer[:rows]
            return self.keys, self.values
        if rows != owner.stepping or owner.end + q > owner.capacity:
            raise RuntimeError("SlotCache.begin() must reserve the step before the forward pass")
        self.key_buffer[:rows, :, owner.end : owner.end + q] = key_states
        self.value_buffer[:rows, :, owner.end : owner.end + q] = value_states
        # Views, not copies: batch and head strides collapse, so attention's matmuls read them in place.
        self.keys = self.key_buffer[:rows, :, owner.start : owner.end + q]
        self.values = self.value_buffer[:rows, :, owner.start : owner.end + q]
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return -1

    def _regrid(self, capacity: int, start: int, end: int, new_end: int) -> None:
        """Copy the live window ``[start, end)`` into fresh zeroed buffers, ending at ``new_end``."""
        if self.key_buffer is None or self.value_buffer is None:
            return
        rows, live = self.owner.rows, end - start
        fresh = []
        for buffer in (self.key_buffer, self.value_buffer):
            shape = (buffer.shape[0], buffer.shape[1], capacity, buffer.shape[3])
            grown = torch.zeros(shape, dtype=buffer.dtype, device=buffer.device)
            if rows and live:
                grown[:rows, :, new_end - live : new_end] = buffer[:rows, :, start:end]
            fresh.append(grown)
        self.key_buffer, self.value_buffer = fresh


class SlotCache(Cache):
    """Keys and values of up to ``slots`` rows in preallocated per-layer buffers (see the module doc).

    Use: ``mask = cache.begin(new_mask_columns)``, the model's forward pass with ``mask`` and this cache,
    then ``cache.commit()``. ``adopt`` takes finished prefill rows from another SlotCache; ``retain``
    drops rows. ``block`` is the growth granularity in columns.
    """

    def __init__(self, slots: int, rows: int = 0, capacity: int = 0, block: int = 256) -> None:
        self.slots, self.rows, self.block = slots, rows, block
        self.capacity = capacity
        self.start = self.end = 0
        self._pending = 0  # columns written by the forward pass in progress
        self.stepping = rows  # rows in the forward pass in progress (the first ones)
        self._mask: torch.Tensor | None = None  # [slots, capacity] bool: which columns each row attends
        self.regrids = 0  # how many times the live window was copied into new buffers (tests, monitoring)
        # Set during a fixed-shape decode step (begin_fixed): the device index of the write column, so
        # that the step's layers write and read the whole buffers (models.decode_graph).
        self.write_at: torch.Tensor | None = None
        super().__init__(layer_class_to_replicate=partial(SlotLayer, self))

    # -- what transformers asks ---------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Columns in the live window (the key length before the step in progress)."""
        return self.end - self.start

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length + query_length, 0

    # -- the engine's side --------------------------------------------------------------------------
    @property
    def slot_layers(self) -> list[SlotLayer]:
        return [layer for layer in self.layers if isinstance(layer, SlotLayer)]

    def begin(
        self, columns: torch.Tensor | None, q: int = 1, device: torch.device | None = None
    ) -> torch.Tensor:
        """Reserve ``q`` new columns for the next forward pass and return its 2-D mask ``[rows, length+q]``.

        ``columns`` ``[rows, q]`` says which new columns are real (a prefill chunk's padding is not);
        None means all of them (a decode step). ``columns`` may cover only the first ``k`` rows: a prefill
        chunk that is all padding for the other rows (sorted longest first) skips them, and their
        columns stay masked and zero."""
        self.stepping = self.rows
        if columns is not None:
            q = columns.shape[1]
            device = columns.device
            self.stepping = columns.shape[0]
            if self.stepping > self.rows:
                raise ValueError(f"{self.stepping} rows of mask for {self.rows} rows")
        self._reserve(left=0, right=q, device=device)
        assert self._mask is not None
        new = self._mask[: self.stepping, self.end : self.end + q]
        if columns is None:
            new.fill_(True)
        else:
            new.copy_(columns)
        self._pending = q
        return self._mask[: self.stepping, self.start : self.end + q]

    def begin_fixed(self, rows: int, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
        """Reserve one new column for a decode step of fixed shape over ``rows`` slots (the running rows
        first, then free slots as padding); returns its mask ``[rows, capacity]`` over the whole buffers
        and the write column. Padding slots attend only to their own new column (finite, never read)."""
        if not self.rows or rows < self.rows or rows > self.slots:
            raise ValueError(f"a fixed step of {rows} rows for {self.rows} running rows, {self.slots} slots")
        self.stepping = rows
        self._reserve(left=0, right=1, device=device)
        assert self._mask is not None
        self._mask[: self.rows, self.end] = True
        attend = torch.zeros(rows, self.capacity, dtype=torch.bool, device=self._mask.device)
        attend[: self.rows, self.start : self.end + 1] = self._mask[: self.rows, self.start : self.end + 1]
        attend[self.rows :, self.end] = True
        self._pending = 1
        return attend, self.end

    @property
    def generation(self) -> tuple[int, int, int]:
        """Changes whenever the layers' buffers are replaced (allocated, regridded): a step recorded over
        the old buffers must not run over the new ones."""
        return self.regrids, self.capacity, len(self.layers)

    def commit(self) -> None:
        """The forward pass wrote its columns into every layer: advance the write column."""
        self.end += self._pending
        self._pending = 0

    def adopt(self, source: SlotCache, keep: list[int]) -> None:
        """Append rows ``keep`` of ``source`` (a finished prefill) into the next free slots, right-aligned
        on the write column. Copies those rows' own keys and values only; running rows stay in place."""
        count, width = len(keep), source.length
        if self.rows + count > self.slots:
            raise ValueError(f"{self.rows} + {count} rows exceed the cache's {self.slots} slots")
        if not count:
            return
        assert source._mask is not None
        self._reserve(left=width, right=1, device=source._mask.device)
        assert self._mask is not None
        index = torch.tensor(keep, dtype=torch.long, device=source._mask.device)
        if not self.rows:
            self.start = self.end  # an empty window: nothing of the old rows to keep
        first = min(self.start, self.end - width)
        if first < self.start:  # the window grows left: those columns are not the running rows'
            self._mask[: self.rows, first : self.start] = False
        self.start = first
        slots = slice(self.rows, self.rows + count)
        self._mask[slots, self.start : self.end] = False
        self._mask[slots, self.end - width : self.end] = source._mask.index_select(0, index)[
            :, source.start : source.end
        ]
        if not self.layers:  # the first rows ever: take the layer shapes from the source
            for theirs in source.slot_layers:
                assert theirs.key_buffer is not None
                ours = SlotLayer(self)
                _, heads, _, head_dim = theirs.key_buffer.shape
                ours.allocate(heads, head_dim, theirs.key_buffer.dtype, theirs.key_buffer.device)
                self.layers.append(ours)
        for ours, theirs in zip(self.slot_layers, source.slot_layers, strict=True):
            assert ours.key_buffer is not None and ours.value_buffer is not None
            assert theirs.key_buffer is not None and theirs.value_buffer is not None
            columns = slice(self.end - width, self.end)
            ours.key_buffer[slots, :, columns] = theirs.key_buffer.index_select(0, index)[
                :, :, source.start : source.end
            ]
            ours.value_buffer[slots, :, columns] = theirs.value_buffer.index_select(0, index)[
                :, :, source.start : source.end
            ]
        self.rows += count

    def retain(self, keep: list[int]) -> list[int]:
        """Keep only rows ``keep``; returns, for each slot afterwards, the row index it held before.

        Slots stay dense: each vacated slot below the new row count takes the row of a kept slot above
        it, so only leavers' slots are written (not every row shifted down)."""
        kept = set(keep)
        count = len(keep)
        order = list(range(self.rows))
        holes = [slot for slot in range(count) if slot not in kept]
        movers = [slot for slot in range(count, self.rows) if slot in kept]
        if holes:
            device = self._mask.device if self._mask is not None else None
            to = torch.tensor(holes, dtype=torch.long, device=device)
            source = torch.tensor(movers, dtype=torch.long, device=device)
            window = slice(self.start, self.end)
            for layer in self.slot_layers:
                assert layer.key_buffer is not None and layer.value_buffer is not None
                layer.key_buffer[to, :, window] = layer.key_buffer[source, :, window]
                layer.value_buffer[to, :, window] = layer.value_buffer[source, :, window]
            if self._mask is not None:
                self._mask[to, window] = self._mask[source, window]
            for hole, mover in zip(holes, movers, strict=True):
                order[hole] = mover
        self.rows = count
        if not count:
            self.start = self.end
        else:
            self.trim()
        return order[:count]

    def trim(self) -> None:
        """Drop leading columns no row attends to (a view offset: nothing moves)."""
        if self._mask is None or not self.rows or not self.length:
            return
        used = self._mask[: self.rows, self.start : self.end].any(dim=0)
        if bool(used.any()):
            self.start += int(used.nonzero()[0])
        else:
            self.start = self.end

    # -- growth -------------------------------------------------------------------------------------
    def _reserve(self, left: int, right: int, device: torch.device | None) -> None:
        """Make room for ``right`` columns after ``end`` and ``left`` columns before it; copy the live
        window into bigger buffers only when it does not fit (rare: room to spare is added each time)."""
        if self._mask is None:
            # A capacity given up front (a prefill of known length) is exact; otherwise leave a block spare.
            spare = 0 if self.capacity else self.block
            self.capacity = max(self.capacity, _round_up(left + right + spare, self.block))
            self._mask = torch.zeros(self.slots, self.capacity, dtype=torch.bool, device=device)
            self.start = self.end = left
            return
        if self.end - left >= 0 and self.end + right <= self.capacity:
            return
        if not self.rows and left + right <= self.capacity:  # empty: move the write column, copy nothing
            self.start = self.end = left
            return
        live = self.length if self.rows else 0
        new_end = max(live, left)
        # Spare room on the right: at least a block, and half the live window so that a long-running
        # batch regrids O(log) times, not once per block.
        capacity = _round_up(new_end + right + max(self.block, live // 2), self.block)
        for layer in self.slot_layers:
            layer._regrid(capacity, self.start, self.end, new_end)
        mask = torch.zeros(self.slots, capacity, dtype=torch.bool, device=self._mask.device)
        if self.rows and live:
            mask[: self.rows, new_end - live : new_end] = self._mask[: self.rows, self.start : self.end]
        self._mask, self.capacity = mask, capacity
        self.start, self.end = new_end - live, new_end
        self.regrids += 1
