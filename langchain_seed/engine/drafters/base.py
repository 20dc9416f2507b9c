"""What the scheduler needs from a drafter, and what a drafter hands back.

A drafter proposes the draft tree of every active sequence; the target only verifies.
Any distribution is lossless as a draft: candidates are drawn from exactly the
distribution handed to the acceptance rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from langchain_seed.engine.request import SequenceState
from langchain_seed.engine.tree import DraftTree
from langchain_seed.engine.verify import Acceptance


@dataclass
class Draft:
    """One sequence's draft tree for a round.

    Attributes:
        node_tokens: drafted token of each tree node (breadth-first order).
        draft_probs: `[1 + nodes, vocab]` draft distribution at the root (row 0) and at each
            node (row 1 + i) that has children; None for greedy requests.
        tree: the tree actually drafted, the lane's tree cut to its first levels when the
            draft stopped early (`SpeculativeConfig.draft_confidence`); None: the lane's tree.
    """

    node_tokens: list[int]
    draft_probs: torch.Tensor | None = None
    tree: DraftTree | None = None

    def tree_or(self, lane_tree: DraftTree) -> DraftTree:
        """The tree this draft fills: its own cut tree, else the lane's."""
        return self.tree if self.tree is not None else lane_tree


class Drafter(Protocol):
    """What the scheduler needs from a drafter. Sequences are passed in a fixed member order."""

    rows: list[SequenceState]
    """The sequences being drafted for, in member order."""

    forwards: int
    """Draft forwards made so far."""

    def add(self, sequences: list[SequenceState]) -> None:
        """Start drafting for newly admitted sequences (e.g. prefill their prompts)."""

    def remove(self, sequences: list[SequenceState]) -> None:
        """Forget sequences that finished, failed or were cancelled."""

    def draft(self, sequences: list[SequenceState], tree: DraftTree) -> list[Draft]:
        """The draft of every sequence given, in order."""

    def commit(self, sequence: SequenceState, acceptance: Acceptance) -> None:
        """Learn which nodes the target accepted (e.g. keep their cache slots)."""

    def compact_if_needed(self, slack: int) -> None:
        """Compact the draft's cache once rejected drafts left more than `slack` slots behind."""

    def nbytes(self) -> int:
        """Bytes held by the draft's cache."""
