"""`engine.cache`: the growing cache layer under the engine's batch operations."""

from __future__ import annotations

import torch

from langchain_seed.engine.cache import BatchKV, GrowingLayer, _layers


def _states(batch: int, slots: int, start: float) -> torch.Tensor:
    """`[batch, 2 heads, slots, 8]` keys whose values say which slot they are."""
    return (torch.arange(slots, dtype=torch.float32) + start).view(1, 1, slots, 1).expand(batch, 2, slots, 8).clone()


def _grow(kv: BatchKV, slots: int, start: float) -> None:
    states = _states(kv.batch_size, slots, start)
    kv.cache.update(states, states.clone(), 0)
    kv.commit_new_slots(torch.ones(kv.batch_size, slots, dtype=torch.bool))


def _slot_values(kv: BatchKV) -> list[float]:
    return next(_layers(kv.cache)).keys[0, 0, :, 0].tolist()


def test_appends_go_into_spare_slots_without_copying_the_cache():
    kv = BatchKV.empty(1)
    _grow(kv, 40, 0)
    _grow(kv, 3, 40)
    layer = next(_layers(kv.cache))
    assert isinstance(layer, GrowingLayer)
    store = layer.keys.data_ptr()
    for step in range(5):
        _grow(kv, 1, 43 + step)
        assert layer.keys.data_ptr() == store  # written in place: the spare slots, no concatenation
    assert _slot_values(kv) == [float(i) for i in range(48)]
    assert layer.keys.shape == (1, 2, 48, 8) and layer.keys.stride(2) == 8 and layer.keys.stride(3) == 1


def test_a_cache_replaced_from_outside_is_adopted_and_rows_split_off_stay_intact():
    kv = BatchKV.empty(2)
    _grow(kv, 20, 0)
    _grow(kv, 2, 20)
    rows = kv.split_rows()  # views of the batch's tensors
    before = [_slot_values(row) for row in rows]
    _grow(kv, 4, 22)  # the batch grows on: its rows split off earlier must not change
    assert [_slot_values(row) for row in rows] == before
    _grow(rows[0], 1, 100)  # a row grows on its own (copied into a store of its own)
    assert _slot_values(rows[0]) == before[0] + [100.0]
    assert _slot_values(kv)[:26] == [float(i) for i in range(26)]
    kv.select_rows([1])  # replaced by a gather: adopted at the next append
    _grow(kv, 1, 26)
    assert _slot_values(kv) == [float(i) for i in range(27)]
    kv.trim_tail()
    kv.valid[:, -3:] = False
    kv.trim_tail()  # a leading cut of the store: the next append overwrites the dropped slots
    _grow(kv, 1, 24)
    assert _slot_values(kv) == [float(i) for i in range(25)]


def test_first_slots_is_a_copy():
    kv = BatchKV.empty(1)
    _grow(kv, 10, 0)
    head = kv.first_slots(4)
    next(_layers(head.cache)).keys.zero_()
    assert _slot_values(kv) == [float(i) for i in range(10)] and head.num_slots == 4
