"""One model forward over a `BatchKV`, each row bringing its own new tokens.

Rows may bring different numbers of tokens; the batch is padded to the longest row and
the padding hides itself (it sees only itself and nobody sees it). Each new token says
which existing slots it sees (its row's committed slots plus, for draft-tree nodes, the
slots of its tentative ancestors) and which new tokens it sees (the tree's visibility).
The forward returns the output at every new position; the caller decides which slots to
keep with `BatchKV.commit_new_slots`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from langchain_seed.engine.cache import BatchKV


@dataclass
class RowInput:
    """New tokens of one row.

    Attributes:
        token_ids: the `m` new tokens.
        positions: their absolute positions.
        visible_new: `[m, m]` bool, which of the new tokens each one sees.
        extra_slots: per new token, existing slots it sees beyond the row's committed ones.
        features: `[m, hidden]` per new token, the feature it is paired with (feature drafts only).
    """

    token_ids: list[int]
    positions: list[int]
    visible_new: torch.Tensor
    extra_slots: list[list[int]] = field(default_factory=list)
    features: torch.Tensor | None = None


def causal_row(token_ids: list[int], first_position: int) -> RowInput:
    """A plain causal run of tokens starting at `first_position`."""
    count = len(token_ids)
    visible = torch.ones(count, count, dtype=torch.bool).tril()
    return RowInput(list(token_ids), list(range(first_position, first_position + count)), visible)


@dataclass
class BatchInputs:
    """Padded tensors for one forward: ids and positions `[batch, new]`, mask `[batch, 1, new, slots + new]`."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    width: int
    features: torch.Tensor | None = None  # [batch, new, hidden] when the rows bring features


def pack_rows(kv: BatchKV, rows: list[RowInput], dtype: torch.dtype, device) -> BatchInputs:
    """Pad the rows to one width and build the 4-D attention mask over `kv` plus the new tokens."""
    if len(rows) != kv.batch_size:
        raise ValueError(f"{len(rows)} row inputs for a cache of {kv.batch_size} rows")
    width = max(len(row.token_ids) for row in rows)
    # one tensor each from the padded lists (a copy per row costs more than the forward's Python)
    input_ids = torch.tensor([row.token_ids + [0] * (width - len(row.token_ids)) for row in rows], dtype=torch.long)
    position_ids = torch.tensor([row.positions + [0] * (width - len(row.positions)) for row in rows],
                                dtype=torch.long)
    mask = None if _is_plain_causal(kv, rows, width) else _attention_mask(kv, rows, width, dtype, device)
    return BatchInputs(input_ids.to(device), position_ids.to(device), mask, width, _pack_features(rows, width, device))


def _attention_mask(kv: BatchKV, rows: list[RowInput], width: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The 4-D additive mask `[batch, 1, width, slots + width]`: each row's new tokens see the
    cache's valid slots, their `extra_slots` and the new tokens their `visible_new` allows."""
    batch = len(rows)
    visible_new = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)
    visible_old = kv.valid[:, None, :].expand(batch, width, kv.num_slots).clone()
    for index, row in enumerate(rows):
        count = len(row.token_ids)
        if count:
            visible_new[index, :count, :count] = row.visible_new
        visible_old[index, count:] = False
        for token_index, slots in enumerate(row.extra_slots):
            if slots:
                visible_old[index, token_index, slots] = True
    return kv.attention_mask(visible_old.to(device), visible_new.to(device), dtype)


def _pack_features(rows: list[RowInput], width: int, device) -> torch.Tensor | None:
    """`[batch, width, hidden]` the rows' features, zero on padding; None when no row has any."""
    given = [row.features for row in rows if row.features is not None]
    if not given:
        return None
    features = given[0].new_zeros(len(rows), width, given[0].shape[-1])
    for index, row in enumerate(rows):
        if row.features is not None:
            features[index, : row.features.shape[0]] = row.features
    return features.to(device)


def _is_plain_causal(kv: BatchKV, rows: list[RowInput], width: int) -> bool:
    """One row, no holes in its cache, a causal run of new tokens: the model's own causal mask is exact."""
    if len(rows) != 1 or not kv.is_prefix_only() or any(rows[0].extra_slots):
        return False
    return bool(torch.equal(rows[0].visible_new, torch.ones(width, width, dtype=torch.bool).tril()))


def model_dtype(model) -> torch.dtype:
    return _first_parameter(model).dtype


def model_device(model) -> torch.device:
    return _first_parameter(model).device


_first_parameters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _first_parameter(model) -> torch.nn.Parameter:
    """The model's first parameter, found once per model (`model.parameters()` walks the
    modules up to it on every call: 50 us for a quantised model, whose first modules hold
    buffers); its dtype and device follow the model's `.to()`."""
    parameter = _first_parameters.get(model)
    if parameter is None:
        parameter = _first_parameters[model] = next(model.parameters())
    return parameter


def forward_logits(model, kv: BatchKV, rows: list[RowInput], skip_first: int = 0) -> torch.Tensor:
    """Run `model` on the rows; returns logits at every new position from `skip_first` on,
    `[batch, width - skip_first, vocab]` (positions before it never reach the LM head)."""
    inputs = pack_rows(kv, rows, model_dtype(model), model_device(model))
    output = model(
        input_ids=inputs.input_ids,
        position_ids=inputs.position_ids,
        attention_mask=inputs.attention_mask,
        cache=kv.cache,
        use_cache=True,
        logits_to_keep=inputs.width - skip_first,
    )
    return output.logits


def forward_features(model, kv: BatchKV, rows: list[RowInput]) -> torch.Tensor:
    """Run a `FeatureDraftModel` on the rows (tokens paired with features); returns its
    outputs `[batch, width, hidden]`."""
    inputs = pack_rows(kv, rows, model_dtype(model), model_device(model))
    return model(inputs.input_ids, inputs.features, position_ids=inputs.position_ids,
                 attention_mask=inputs.attention_mask, cache=kv.cache, use_cache=True)


def forward_hidden(model, kv: BatchKV, rows: list[RowInput]) -> torch.Tensor:
    """Run `model`'s decoder (no LM head) on the rows; returns `[batch, width, hidden]`."""
    inputs = pack_rows(kv, rows, model_dtype(model), model_device(model))
    output = model.get_decoder()(
        input_ids=inputs.input_ids,
        position_ids=inputs.position_ids,
        attention_mask=inputs.attention_mask,
        cache=kv.cache,
        use_cache=True,
    )
    return output.last_hidden_state


@contextlib.contextmanager
def captured_features(model, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Within this block, each forward of `model` appends its features (its decoder's last
    hidden state, `[batch, new, hidden]`: what its LM head reads) to the yielded list."""
    captured: list[torch.Tensor] = []
    if not enabled:
        yield captured
        return
    handle = model.get_decoder().register_forward_hook(
        lambda module, args, output: captured.append(output.last_hidden_state))
    try:
        yield captured
    finally:
        handle.remove()


def prefill(model, token_ids: list[int], with_features: bool = False) -> tuple[BatchKV, torch.Tensor | None]:
    """A one-row cache holding `token_ids` (plain causal forward, no logits kept), and with
    `with_features` the model's features there, `[len, hidden]` (else None)."""
    kv = BatchKV.empty(1)
    if not token_ids:
        return kv, None
    device = model_device(model)
    ids = torch.tensor([token_ids], dtype=torch.long, device=device)
    positions = torch.arange(len(token_ids), device=device)[None, :]
    with captured_features(model, with_features) as features:
        model(input_ids=ids, position_ids=positions, cache=kv.cache, use_cache=True, logits_to_keep=1)
    kv.commit_new_slots(torch.ones(1, len(token_ids), dtype=torch.bool))
    return kv, features[0][0] if features else None
