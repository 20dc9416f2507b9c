"""A batch of KV caches whose rows grow together but keep only the slots they own.

transformers' `DynamicCache` appends the same number of slots to every row of a batch.
Sequences in a batch accept different numbers of drafted tokens, so instead of cropping
each row we keep a `valid` mask over slots: a rejected draft token's slot just becomes
invalid and the 4-D attention mask hides it. Keys are stored after rotary embedding at
their true positions, so the order of slots in a row does not matter. When enough slots
are dead the batch is compacted (valid slots gathered to the left), and rows are added or
removed between rounds with `concat` / `select_rows`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

SPARE_SLOTS_MIN = 16
"""Spare slots a growing layer reserves at least (and an eighth of its length: more spare
slots cost memory on every row of a batch, fewer cost copies)."""


class GrowingLayer(DynamicLayer):
    """transformers' `DynamicLayer` whose keys and values are views of a store with spare
    slots: an append writes into the spare slots instead of concatenating (a copy of the
    whole cache per layer per forward, most of a decoding forward's memory traffic at a few
    hundred slots). `keys` / `values` stay `[batch, heads, slots, head_dim]` with the last
    two dimensions contiguous. Whatever replaces them from outside (a gather, a
    concatenation, a cut) is simply adopted: copied into a new store at the next append,
    or kept in place when it is a leading cut of the store. The first states are kept as
    given, uncopied, until the first append."""

    def __init__(self) -> None:
        super().__init__()
        self._key_store: torch.Tensor | None = None
        self._value_store: torch.Tensor | None = None
        self._own_views: tuple[torch.Tensor, torch.Tensor] | None = None  # keys, values as last set here

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append `[batch, heads, new, head_dim]` keys and values; returns the whole views."""
        keys, values = self.keys, self.values
        if not self.is_initialized or keys is None or values is None or keys.numel() == 0:
            # the first states are kept as given (a prefill, a row of a batch)
            self.is_initialized, self.device = True, key_states.device
            self.keys, self.values, self._own_views = key_states, value_states, None
            return key_states, value_states
        old, new = keys.shape[2], key_states.shape[2]
        key_store, value_store = self.reserve(new)
        key_store.narrow(2, old, new).copy_(key_states)
        value_store.narrow(2, old, new).copy_(value_states)
        self.filled(old + new)
        return self.keys, self.values

    def reserve(self, new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value stores `[batch, heads, capacity, head_dim]`, holding this layer's
        slots first and room for `new` more after them (a copy into larger ones where needed);
        whoever writes those slots then calls `filled`. The layer must hold slots already."""
        keys, values = self.keys, self.values
        views, key_store, value_store = self._own_views, self._key_store, self._value_store
        if keys is None or values is None:
            raise ValueError("reserve needs a layer that holds slots")
        old = keys.shape[2]
        if (views is not None and views[0] is keys and views[1] is values and key_store is not None
                and value_store is not None and old + new <= key_store.shape[2]):
            return key_store, value_store  # the views set by `filled`, untouched since: no checks
        if (key_store is None or value_store is None or not _is_leading_cut(keys, key_store, old + new)
                or not _is_leading_cut(values, value_store, old + new)):
            key_store, value_store = _store_for(keys, old + new), _store_for(values, old + new)
            self._key_store, self._value_store = key_store, value_store
        return key_store, value_store

    def filled(self, slots: int) -> None:
        """The first `slots` slots of the stores `reserve` returned are this layer's now."""
        assert self._key_store is not None and self._value_store is not None, "filled follows reserve"
        self.keys, self.values = self._key_store.narrow(2, 0, slots), self._value_store.narrow(2, 0, slots)
        self._own_views = (self.keys, self.values)

    def hold(self, key_store: torch.Tensor, value_store: torch.Tensor, slots: int) -> None:
        """Take stores `[batch, heads, capacity, head_dim]` whose first `slots` slots are
        filled: the next appends write into the rest without a copy."""
        self.is_initialized, self.device = True, key_store.device
        self._key_store, self._value_store = key_store, value_store
        self.keys, self.values = key_store[:, :, :slots], value_store[:, :, :slots]
        self._own_views = (self.keys, self.values)


def _is_leading_cut(view: torch.Tensor, store: torch.Tensor, needed: int) -> bool:
    """Whether `view` is `store[:, :, :n]` and the store holds `needed` slots."""
    return (view.data_ptr() == store.data_ptr() and view.stride() == store.stride()
            and view.shape[:2] == store.shape[:2] and view.shape[3] == store.shape[3] and store.shape[2] >= needed)


def _store_for(current: torch.Tensor, needed: int) -> torch.Tensor:
    """A new store holding `current`'s slots, with room for `needed` and spare slots."""
    batch, heads, slots, dim = current.shape
    store = current.new_empty(batch, heads, _capacity(needed), dim)
    store[:, :, :slots] = current
    return store


def _capacity(needed: int) -> int:
    """Slots a store for `needed` slots holds: the spare ones too."""
    return needed + max(SPARE_SLOTS_MIN, needed // 8)


def _repeated_store(current: torch.Tensor, times: int, room: int) -> torch.Tensor:
    """A store holding every row of `current` `[batch, heads, slots, dim]` `times` times in a
    row (one copy), with room for `room` more slots and spare ones (none at all for no room:
    an exact copy)."""
    batch, heads, slots, dim = current.shape
    store = current.new_empty(batch * times, heads, _capacity(slots + room) if room else slots, dim)
    store.view(batch, times, heads, -1, dim)[:, :, :, :slots] = current[:, None]
    return store


def _stacked_store(parts: list[torch.Tensor], slots: int) -> torch.Tensor:
    """A store holding `parts`' rows one batch below the other (one copy), each padded with
    zeros to `slots` slots (a hidden slot must hold finite values: the attention multiplies
    its value by a zero weight), with spare slots."""
    first = parts[0]
    store = first.new_empty(sum(part.shape[0] for part in parts), first.shape[1], _capacity(slots), first.shape[3])
    row = 0
    for part in parts:
        rows, filled = part.shape[0], part.shape[2]
        store[row:row + rows, :, :filled] = part
        store[row:row + rows, :, filled:slots].zero_()
        row += rows
    return store


def growing_cache() -> DynamicCache:
    """An empty transformers `DynamicCache` whose layers are `GrowingLayer`s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


class BatchKV:
    """A `DynamicCache` over `[batch, heads, slots, head_dim]` plus which slots each row owns.

    Attributes:
        cache: the transformers cache passed to the model as `cache=`.
        valid: `[batch, slots]` bool on the CPU, True where the slot holds a committed token of
            that row (index tensors built from it move to each layer's device).
    """

    def __init__(self, cache, valid: torch.Tensor) -> None:
        self.cache = cache
        self.valid = valid

    @classmethod
    def empty(cls, batch_size: int, device: torch.device | str = "cpu") -> BatchKV:
        return cls(growing_cache(), torch.zeros(batch_size, 0, dtype=torch.bool, device=device))

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def num_slots(self) -> int:
        return self.valid.shape[1]

    def valid_counts(self) -> torch.Tensor:
        """`[batch]` long: committed tokens held by each row."""
        return self.valid.sum(dim=1)

    def nbytes(self) -> int:
        """Bytes held by keys and values."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def _tensors(self):
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                yield layer.keys
                yield layer.values

    def attention_mask(self, visible_old: torch.Tensor, visible_new: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The 4-D float mask for a forward of `new` tokens on top of this cache.

        visible_old: `[batch, new, slots]` bool, which existing slots each new token sees.
        visible_new: `[batch, new, new]` bool, which new tokens each new token sees.
        Returns `[batch, 1, new, slots + new]`: 0 where visible, the dtype's minimum elsewhere.
        """
        visible = torch.cat([visible_old, visible_new], dim=2)
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return mask.unsqueeze(1)

    def commit_new_slots(self, new_valid: torch.Tensor) -> None:
        """Record which of the slots appended by the last forward are kept. new_valid: `[batch, new]`."""
        self.valid = torch.cat([self.valid, new_valid], dim=1)

    def slack(self) -> int:
        """Slots every row could lose: total slots minus the fullest row's count."""
        if self.num_slots == 0:
            return 0
        return self.num_slots - int(self.valid_counts().max())

    def trim_tail(self) -> None:
        """Drop trailing slots that no row owns (cheap: no copy of the kept slots)."""
        if self.num_slots == 0 or self.batch_size == 0:
            return
        owned = self.valid.any(dim=0).nonzero()
        keep = int(owned[-1]) + 1 if owned.numel() else 0
        if keep == self.num_slots:
            return
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys[:, :, :keep]
                layer.values = layer.values[:, :, :keep]
        self.valid = self.valid[:, :keep]

    def is_prefix_only(self) -> bool:
        """True when every slot is valid (no holes): a plain causal forward needs no mask."""
        return bool(self.valid.all())

    def compact(self) -> None:
        """Gather each row's valid slots to the left and drop the slots no row needs."""
        counts = self.valid_counts()
        width = int(counts.max()) if counts.numel() else 0
        # Stable sort puts valid slots first, in their order: the gather index per row.
        order = torch.sort((~self.valid).to(torch.int8), dim=1, stable=True).indices[:, :width]
        for layer in getattr(self.cache, "layers", []):
            if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
                continue
            index = order.to(layer.keys.device)[:, None, :, None].expand(-1, layer.keys.shape[1], -1,
                                                                         layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(2, index.expand(-1, -1, -1, layer.values.shape[3]))
        self.valid = torch.arange(width, device=self.valid.device)[None, :] < counts[:, None]

    def select_rows(self, rows: list[int]) -> None:
        """Keep only `rows`, in that order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.valid.device)
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                layer_index = index.to(layer.keys.device)  # layers may sit on different GPUs
                layer.keys = layer.keys.index_select(0, layer_index)
                layer.values = layer.values.index_select(0, layer_index)
        self.valid = self.valid.index_select(0, index)

    def repeat_rows(self, times: int, room: int = 0) -> BatchKV:
        """A new batch with every row repeated `times` times (shared prompt prefill), with
        room for `room` more slots before its first copy into a larger store."""
        clone = BatchKV(growing_cache(), self.valid.repeat_interleave(times, dim=0))
        for layer in _layers(self.cache) if _has_layers(self.cache) else []:
            repeated = GrowingLayer()
            repeated.hold(_repeated_store(layer.keys, times, room), _repeated_store(layer.values, times, room),
                          layer.keys.shape[2])
            clone.cache.layers.append(repeated)
        return clone

    def first_slots(self, slots: int, room: int = 0) -> BatchKV:
        """A new batch holding copies of this batch's first `slots` slots (a prompt's prefix
        when the rows were prefilled in order), with room for `room` more slots before its
        first copy into a larger store (0: an exact copy)."""
        head = BatchKV(growing_cache(), self.valid[:, :slots].clone())
        for layer in _layers(self.cache) if _has_layers(self.cache) else []:
            copied = GrowingLayer()
            copied.hold(_repeated_store(layer.keys[:, :, :slots], 1, room),
                        _repeated_store(layer.values[:, :, :slots], 1, room), slots)
            head.cache.layers.append(copied)
        return head

    def split_rows(self) -> list[BatchKV]:
        """One single-row batch per row (views of this batch's tensors, no copy)."""
        rows = []
        for row in range(self.batch_size):
            single = BatchKV(growing_cache(), self.valid[row : row + 1])
            if _has_layers(self.cache):
                single._copy_layers_from(self, lambda t, row=row: t[row : row + 1])
            rows.append(single)
        return rows

    def row_views(self, times: int) -> list[BatchKV]:
        """`times` one-row batches over this one-row batch's tensors (views, no copy): rows that
        will only be read or copied into a batch (a shared prompt prefix and nothing after it)."""
        if self.batch_size != 1:
            raise ValueError(f"row_views needs a one-row batch; this one has {self.batch_size} rows")
        return [self.split_rows()[0] for _ in range(times)]

    def concat(self, other: BatchKV) -> None:
        """Append the rows of `other` below this batch's rows (slots padded as invalid)."""
        self.concat_all([other])

    def concat_all(self, others: list[BatchKV]) -> None:
        """Append the rows of every batch in `others`, in order, below this batch's rows (slots
        padded as invalid), copying every row once."""
        parts = [part for part in (self, *others) if part.batch_size]
        if len(parts) <= 1:
            if parts and parts[0] is not self:
                self.cache, self.valid = parts[0].cache, parts[0].valid
            return
        if not any(_has_layers(part.cache) for part in parts):
            self.valid = torch.cat([part.valid for part in parts], dim=0)
            return
        template = next(part for part in parts if _has_layers(part.cache))
        for part in parts:
            if not _has_layers(part.cache):
                part._materialize_like(template)
        width = max(part.num_slots for part in parts)
        layer_lists = [list(_layers(part.cache)) for part in parts]
        if parts[0] is not self:  # an empty batch takes new layers, leaving the parts as they were
            self.cache = growing_cache()
            self.cache.layers.extend(GrowingLayer() for _ in layer_lists[0])
        for index, mine in enumerate(self.cache.layers):
            key_store = _stacked_store([layers[index].keys for layers in layer_lists], width)
            value_store = _stacked_store([layers[index].values for layers in layer_lists], width)
            if isinstance(mine, GrowingLayer):
                mine.hold(key_store, value_store, width)
            else:
                mine.keys, mine.values = key_store[:, :, :width], value_store[:, :, :width]
        self.valid = torch.cat([_padded(part.valid, width) for part in parts], dim=0)

    def _materialize_like(self, template: BatchKV) -> None:
        """Give a cache that never saw a token (rows with no slots) empty layers shaped like `template`'s."""
        for layer_index, layer in enumerate(_layers(template.cache)):
            keys_shape = (self.batch_size, layer.keys.shape[1], self.num_slots, layer.keys.shape[3])
            values_shape = (self.batch_size, layer.values.shape[1], self.num_slots, layer.values.shape[3])
            self.cache.update(layer.keys.new_zeros(keys_shape), layer.values.new_zeros(values_shape), layer_index)

    def _copy_layers_from(self, source: BatchKV, transform) -> None:
        for layer_index, layer in enumerate(_layers(source.cache)):
            self.cache.update(transform(layer.keys), transform(layer.values), layer_index)


def _padded(valid: torch.Tensor, width: int) -> torch.Tensor:
    """`valid` `[batch, slots]` widened to `width` slots with invalid ones."""
    extra = width - valid.shape[1]
    return valid if extra <= 0 else torch.cat([valid, valid.new_zeros(valid.shape[0], extra)], dim=1)


def _has_layers(cache) -> bool:
    layers = getattr(cache, "layers", None) or []
    return any(getattr(layer, "is_initialized", False) and layer.keys is not None for layer in layers)


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(cache).__name__} has no per-layer key/value tensors; langchain-seed needs a DynamicCache"
        )
    for layer in layers:
        if not getattr(layer, "is_initialized", False) or layer.keys is None:
            raise ValueError("cannot merge a cache with an uninitialised layer: prefill every row first")
        yield layer
