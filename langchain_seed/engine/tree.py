"""The draft tree of a `k_config`: who is whose parent, at which depth, who sees whom.

Nodes are numbered breadth first. Depth-1 nodes hang off the root, which is the last
committed token of the sequence (its parent index is -1). Tree attention is expressed as
a boolean "visible" matrix that `cache.attention_mask` turns into the 4-D float mask the
models accept, so no model code is patched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class DraftTree:
    """The shape of one draft tree.

    Attributes:
        k_config: children per node at each depth.
        parents: parent node of each node, -1 for the root's children.
        depths: depth of each node, 1 for the root's children.
        level_starts: index of the first node of each depth; `level_starts[d - 1]` for depth d,
            with a final entry equal to the node count.
    """

    k_config: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    level_starts: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def is_chain(self) -> bool:
        """One candidate per depth: every node's only visible tree nodes are earlier nodes."""
        return all(k == 1 for k in self.k_config)

    @property
    def depth(self) -> int:
        return len(self.k_config)

    def level(self, depth: int) -> range:
        """Node indices at `depth` (1-based)."""
        return range(self.level_starts[depth - 1], self.level_starts[depth])

    def children(self, node: int) -> range:
        """Children of `node` (-1 for the root), in order; empty for a leaf."""
        if node == -1:
            return self.level(1) if self.depth else range(0)
        depth = self.depths[node]
        if depth == self.depth:
            return range(0)
        k = self.k_config[depth]
        first = self.level_starts[depth] + (node - self.level_starts[depth - 1]) * k
        return range(first, first + k)

    def path_to(self, node: int) -> list[int]:
        """Nodes from a depth-1 node down to `node`, inclusive."""
        path = []
        while node != -1:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def ancestor_matrix(self) -> torch.Tensor:
        """`[size, size]` bool: entry (i, j) is True when j is i or an ancestor of i."""
        return _ancestor_matrix(self)

    def verification_visibility(self, num_pending: int) -> torch.Tensor:
        """`[P + size, P + size]` bool: who sees whom in one target forward over pending + tree.

        The P pending tokens (committed but not yet in the cache) form a causal chain; every
        tree node sees all pending tokens, its ancestors and itself.
        """
        total = num_pending + self.size
        visible = torch.zeros(total, total, dtype=torch.bool)
        visible[:num_pending, :num_pending] = torch.ones(num_pending, num_pending, dtype=torch.bool).tril()
        visible[num_pending:, :num_pending] = True
        visible[num_pending:, num_pending:] = self.ancestor_matrix()
        return visible

    def position_offsets(self, num_pending: int) -> torch.Tensor:
        """`[P + size]` long: position of each input relative to the first pending token."""
        pending = torch.arange(num_pending)
        nodes = torch.tensor(self.depths, dtype=torch.long) + (num_pending - 1)
        return torch.cat([pending, nodes])


def build_tree(k_config: tuple[int, ...]) -> DraftTree:
    """The `DraftTree` of `k_config` (cached: trees are immutable)."""
    return _build_tree(tuple(k_config))


@lru_cache(maxsize=64)
def _build_tree(k_config: tuple[int, ...]) -> DraftTree:
    parents: list[int] = []
    depths: list[int] = []
    level_starts = [0]
    previous_level = [-1]
    for depth, k in enumerate(k_config, start=1):
        level = []
        for parent in previous_level:
            for _ in range(k):
                level.append(len(parents))
                parents.append(parent)
                depths.append(depth)
        level_starts.append(len(parents))
        previous_level = level
    return DraftTree(tuple(k_config), tuple(parents), tuple(depths), tuple(level_starts))


@lru_cache(maxsize=64)
def _ancestor_matrix(tree: DraftTree) -> torch.Tensor:
    visible = torch.eye(tree.size, dtype=torch.bool)
    for node in range(tree.size):
        parent = tree.parents[node]
        if parent >= 0:
            visible[node] |= visible[parent]
    return visible
