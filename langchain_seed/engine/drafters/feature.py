"""The feature drafter: an EAGLE-style draft that also reads the target's hidden states."""

from __future__ import annotations

import torch

from langchain_seed.engine.cache import BatchKV
from langchain_seed.engine.drafters.base import Draft
from langchain_seed.engine.drafters.depth import DraftDepth
from langchain_seed.engine.drafters.model import ModelDrafter
from langchain_seed.engine.forward import (
    RowInput,
    causal_row,
    forward_features,
    model_device,
)
from langchain_seed.engine.request import SequenceState
from langchain_seed.engine.tree import DraftTree
from langchain_seed.engine.verify import Acceptance


class FeatureDrafter(ModelDrafter):
    """A `FeatureDraftModel` (EAGLE-style) serving every sequence of a lane.

    The draft's cache holds one entry per committed token t_i, fed with the target's
    feature f_{i-1} at the position before it (zeros for the first token). The target's
    features reach each sequence (`SequenceState.target_features`) from its prefill and
    from every verification; a round first feeds the tokens whose previous feature
    arrived, the last of them being the pending token, whose output heads the draft.
    Each drafted node is fed with its parent's output, the draft's guess at the target's
    feature there. Drafted nodes never stay in the cache: the accepted ones come back
    with the target's own features.

    Args:
        model: a `FeatureDraftModel` assembled with the lane's target.
    """

    needs_target_features = True
    run_model = staticmethod(forward_features)

    def __init__(self, model, depth: DraftDepth | None = None) -> None:
        super().__init__(model, depth=depth)
        self._fed: dict[int, int] = {}  # per sequence: tokens in the draft cache
        self._outputs: list[dict[int, torch.Tensor]] = []  # per member: node (-1 root) -> output
        self._member_index: dict[int, int] = {}

    @staticmethod
    def _head_of(model, head_token_ids: list[int] | None):
        ids = torch.tensor(model.head_token_ids, dtype=torch.long, device=model_device(model))
        return model.vocab_size, ids, model.head_weight

    def add(self, sequences: list[SequenceState]) -> None:
        """Rows for new sequences; their prompts are fed with their first draft."""
        for sequence in sequences:
            self.kv.concat(BatchKV.empty(1))
            self.rows.append(sequence)
            self._fed[id(sequence)] = 0

    def remove(self, sequences: list[SequenceState]) -> None:
        super().remove(sequences)
        for sequence in sequences:
            self._fed.pop(id(sequence), None)

    def draft(self, sequences: list[SequenceState], tree: DraftTree) -> list[Draft]:
        self._member_index = {id(s): i for i, s in enumerate(sequences)}
        self._outputs = [{} for _ in sequences]
        return super().draft(sequences, tree)

    def commit(self, sequence: SequenceState, acceptance: Acceptance) -> None:
        """Forget every node of the round: accepted ones return with the target's features."""
        self._learn(sequence, acceptance)
        row = self._row_of(sequence)
        node_slots = self._node_slots.pop(id(sequence), [])
        self.kv.valid[row, [slot for slot in node_slots if slot >= 0]] = False

    def _pending_row(self, sequence: SequenceState) -> RowInput:
        """Tokens t_fed .. t_n (the pending one) with features f_{fed-1} .. f_{n-1}."""
        first = self._fed[id(sequence)]
        features = sequence.take_target_features()  # [n - first (+1 after the first round), hidden]
        width = self.head_weight.shape[-1]
        if features is None:
            features = self.head_weight.new_zeros(0, width)
        if first == 0:
            features = torch.cat([features.new_zeros(1, width), features])
        count = len(sequence.tokens) - first
        if features.shape[0] != count:
            raise RuntimeError(f"feature drafter got {features.shape[0]} target features for {count} new tokens")
        self._fed[id(sequence)] = first + count
        row = causal_row(sequence.tokens[first:], first)
        row.features = features
        return row

    def _level_row(self, sequence, tree: DraftTree, level: list[int], slots: list[int], draft: Draft) -> RowInput:
        row = super()._level_row(sequence, tree, level, slots, draft)
        outputs = self._outputs[self._member_index[id(sequence)]]
        row.features = torch.stack([outputs[tree.parents[node]] for node in level])
        return row

    def _record_outputs(self, level: list[int], hidden: torch.Tensor, going: list[bool]) -> None:
        for i, outputs in enumerate(self._outputs):
            if going[i]:
                for j, node in enumerate(level):
                    outputs[node] = hidden[i, j]
