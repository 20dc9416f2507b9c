"""Prompt prefixes kept between requests: a prompt that starts as an earlier one did
prefills only the rest (what llama.cpp's prompt cache does for its serial requests), for
models whose rows are computed the same way at every size (`store_for`), where a
reused prefix is exactly what a fresh prefill computes.

Tree-of-Thoughts prompts repeat their template (instructions, examples, the question)
from one request to the next: every step's samples, every evaluation. `prefill_cached`
looks up, for one model, the stored prompt sharing the longest prefix with the new one
(at least `MIN_REUSE` tokens), copies that many slots of its cache and prefills the rest on
top; the new prompt's cache is stored in turn. The store is per model, least recently used
first out, within `MAX_BYTES`.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch

from langchain_seed.engine import native
from langchain_seed.engine.cache import BatchKV
from langchain_seed.engine.forward import causal_row, forward_hidden, prefill
from langchain_seed.engine.routing import needs_engine_forward
from langchain_seed.engine.weights.convert import decoder_layers

MIN_REUSE = 16
"""The fewest shared tokens worth a copy of the stored cache."""
MAX_BYTES = 48 * 2**20
"""The most bytes of keys and values kept per model (the default target's 30 layers take
46 KB a token: about 1,000 tokens of prompts)."""


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` have in common."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


class PrefixStore:
    """One model's stored prompt caches, by token tuple, least recently used first."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], BatchKV] = OrderedDict()
        self._bytes = 0  # of every entry's keys and values
        self._lock = threading.Lock()
        self.reused_tokens = 0

    def longest(self, tokens: list[int]) -> tuple[int, BatchKV | None]:
        """(shared length, a copy of the cache of that many tokens) for the stored prompt
        sharing the longest prefix with `tokens`; (0, None) under `MIN_REUSE`."""
        with self._lock:
            best, best_key = 0, None
            for key in self._entries:
                shared = shared_prefix_length(key, tokens)
                if shared > best:
                    best, best_key = shared, key
            if best_key is None or best < MIN_REUSE:
                return 0, None
            self._entries.move_to_end(best_key)
            self.reused_tokens += best
            return best, self._entries[best_key].first_slots(best, room=len(tokens) - best)

    def clear(self) -> None:
        """Drop every stored prompt."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def put(self, tokens: list[int], kv: BatchKV) -> None:
        """Store a copy of the one-row cache `kv` holding `tokens`, evicting the oldest
        entries past `max_bytes` (a cache larger than that is not stored). A prompt already
        stored is only marked as recently used (it came wholly from the store)."""
        key = tuple(tokens)
        if len(tokens) < MIN_REUSE or kv.nbytes() > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            entry = self._entries[key] = kv.first_slots(len(tokens))
            self._bytes += entry.nbytes()
            while self._bytes > self.max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1].nbytes()


_stores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def store_for(model) -> PrefixStore | None:
    """The model's store (made on first use; gone with the model), or None for a model whose
    rows are not computed the same way at every size.

    A stored prefix must hold exactly the bits a fresh prefill would: so only a model of
    `batch_invariant` modules on the CPU with the native kernels keeps one (weights kept in
    blocks, `QuantizedLinear`, or 8-bit activations, `Int8Linear`: they run on the C
    kernels at every size, `routing.needs_engine_forward`). A dense float model's large
    prefills go through torch's matmuls, whose sums depend on the row count, so a reused
    prefix could differ in its last bits and make one request's output depend on the
    requests before it."""
    with _stores_lock:
        if model not in _stores:
            _stores[model] = PrefixStore() if _computed_alike_at_every_size(model) else None
        return _stores[model]


def _computed_alike_at_every_size(model) -> bool:
    """`batch_invariant` modules (`routing.needs_engine_forward`) where they run on the C
    kernels (on the CPU, with the kernels built here), and no dense `nn.Linear` among the
    decoder layers (past the native row limit it would take torch's matmuls)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    layers = decoder_layers(model)
    dense = layers is not None and any(type(module) is torch.nn.Linear for module in layers.modules())
    return ((first is None or first.device.type == "cpu") and native.available() and not dense
            and needs_engine_forward(model))


def forget_prompts(model) -> None:
    """Empty the model's store (where it has one): the next prompts are prefilled whole."""
    with _stores_lock:
        store = _stores.get(model)
    if store is not None:
        store.clear()


def prefill_cached(model, token_ids: list[int]) -> tuple[BatchKV, int]:
    """A one-row cache holding `token_ids` (as `forward.prefill`), reusing the model's
    stored prompt with the longest shared prefix where it has a store; also the forwards it
    made (0 or 1). Computed without autograd, as the engine runs (what is stored must be
    what the engine's own prefill holds)."""
    store = store_for(model)
    with torch.inference_mode():
        if store is None:
            return prefill(model, token_ids)[0], 1 if token_ids else 0
        shared, stored = store.longest(token_ids)
        if stored is None:
            kv = prefill(model, token_ids)[0]
        else:
            kv = stored
            rest = token_ids[shared:]
            if rest:
                forward_hidden(model, kv, [causal_row(rest, shared)])
                kv.commit_new_slots(torch.ones(1, len(rest), dtype=torch.bool))
        store.put(token_ids, kv)
    return kv, 1 if len(token_ids) > shared else 0

