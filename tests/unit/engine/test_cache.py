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


def test_copies_made_with_room_take_their_next_appends_in_place():
    """`repeat_rows`, `first_slots` and `concat` copy once, into stores with room: the appends
    that follow (a prompt's suffixes, the first verification) write there without a copy."""
    kv = BatchKV.empty(1)
    _grow(kv, 10, 0)
    repeated = kv.repeat_rows(3, room=6)
    head = kv.first_slots(4, room=6)
    assert repeated.valid_counts().tolist() == [10, 10, 10] and _slot_values(head) == [0.0, 1.0, 2.0, 3.0]
    for copy, size in ((repeated, 10), (head, 4)):
        store = next(_layers(copy.cache)).keys.data_ptr()
        _grow(copy, 6, size)
        assert next(_layers(copy.cache)).keys.data_ptr() == store
    assert [row[0, :, 0].tolist() for row in next(_layers(repeated.cache)).keys] == [
        [float(i) for i in range(16)]] * 3
    assert next(_layers(kv.repeat_rows(2).cache)).keys.shape == (2, 2, 10, 8)  # no room: an exact copy


def test_rows_joined_by_concat_pad_with_zeros_and_grow_in_place():
    short, long = BatchKV.empty(1), BatchKV.empty(2)
    _grow(short, 3, 0)
    _grow(long, 7, 10)
    short.concat(long)
    layer = next(_layers(short.cache))
    assert short.valid.tolist() == [[True] * 3 + [False] * 4, [True] * 7, [True] * 7]
    assert layer.keys[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert layer.keys[2, 1, :, 0].tolist() == [float(10 + i) for i in range(7)]
    store = layer.keys.data_ptr()
    _grow(short, 2, 50)
    assert layer.keys.data_ptr() == store and layer.keys[1, 0, 7:, 0].tolist() == [50.0, 51.0]


def test_concat_all_joins_many_batches_in_order_and_leaves_them_intact():
    """An empty batch taking several (a lane placing a cluster's rows) copies each row once
    into new layers; a row with no slots yet becomes an invalid, zero-filled one."""
    first, second, empty = BatchKV.empty(1), BatchKV.empty(2), BatchKV.empty(1)
    _grow(first, 3, 0)
    _grow(second, 5, 10)
    joined = BatchKV.empty(0)
    joined.concat_all([first, empty, second])
    layer = next(_layers(joined.cache))
    assert joined.valid.tolist() == [[True] * 3 + [False] * 2, [False] * 5, [True] * 5, [True] * 5]
    assert [row[0, :, 0].tolist() for row in layer.keys] == [
        [0.0, 1.0, 2.0, 0.0, 0.0], [0.0] * 5, [float(10 + i) for i in range(5)], [float(10 + i) for i in range(5)]]
    assert layer is not next(_layers(first.cache)) and _slot_values(first) == [0.0, 1.0, 2.0]
    store = layer.keys.data_ptr()
    _grow(joined, 2, 50)
    assert layer.keys.data_ptr() == store  # the joined store has room


def test_row_views_share_the_prefix_and_grow_apart():
    prefix = BatchKV.empty(1)
    _grow(prefix, 3, 0)
    _grow(prefix, 1, 3)  # now a view of a store with spare slots, which the rows must not write into
    left, right = prefix.row_views(2)
    assert next(_layers(left.cache)).keys.data_ptr() == next(_layers(prefix.cache)).keys.data_ptr()
    _grow(left, 1, 100)
    _grow(right, 2, 200)
    assert _slot_values(left) == [0.0, 1.0, 2.0, 3.0, 100.0]
    assert _slot_values(right) == [0.0, 1.0, 2.0, 3.0, 200.0, 201.0]
    assert _slot_values(prefix) == [0.0, 1.0, 2.0, 3.0]
