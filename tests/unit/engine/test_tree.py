import pytest
import torch

from langchain_seed.engine.config import SpeculativeConfig
from langchain_seed.engine.options import normalize_k_config, tree_size
from langchain_seed.engine.tree import build_tree


def test_chain_is_a_line():
    tree = build_tree((1, 1, 1, 1))
    assert tree.parents == (-1, 0, 1, 2)
    assert tree.depths == (1, 2, 3, 4)
    assert tree.is_chain
    assert torch.equal(tree.ancestor_matrix(), torch.ones(4, 4, dtype=torch.bool).tril())


def test_tree_parents_depths_and_children():
    tree = build_tree((2, 2, 1))
    assert tree.size == 2 + 4 + 4
    assert tree.parents == (-1, -1, 0, 0, 1, 1, 2, 3, 4, 5)
    assert tree.depths == (1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
    assert list(tree.children(-1)) == [0, 1]
    assert list(tree.children(1)) == [4, 5]
    assert list(tree.children(5)) == [9]
    assert list(tree.children(9)) == []
    assert tree.path_to(8) == [1, 4, 8]
    assert not tree.is_chain


def test_ancestor_matrix_sees_only_ancestors():
    tree = build_tree((2, 2))
    visible = tree.ancestor_matrix()
    # node 4 (depth 2) hangs off node 1: it sees 1 and itself, never its sibling branch.
    assert visible[4].nonzero().flatten().tolist() == [1, 4]
    assert visible[2].nonzero().flatten().tolist() == [0, 2]
    assert not visible[0, 1] and not visible[1, 0]


def test_verification_visibility_and_positions():
    tree = build_tree((2, 1))
    visible = tree.verification_visibility(num_pending=2)
    assert visible.shape == (6, 6)
    assert visible[:2, :2].tolist() == [[True, False], [True, True]]
    assert visible[2:, :2].all()
    assert visible[4].tolist() == [True, True, True, False, True, False]
    assert tree.position_offsets(2).tolist() == [0, 1, 2, 2, 3, 3]
    # a boolean mask (`~visible` and masked_fill need one) and integer positions, as documented
    assert visible.dtype == torch.bool and tree.position_offsets(2).dtype == torch.long


def test_empty_tree_is_plain_decoding():
    tree = build_tree(())
    assert tree.size == 0 and tree.depth == 0
    assert list(tree.children(-1)) == []
    assert tree.verification_visibility(1).tolist() == [[True]]


@pytest.mark.parametrize("bad", [(0,), (1, -1), "1111", 4, (1.5,), (True,)])
def test_bad_k_config_is_refused(bad):
    with pytest.raises(ValueError, match="k_config"):
        normalize_k_config(bad)


def test_tree_size_limit():
    assert tree_size((2, 2, 1)) == 10
    with pytest.raises(ValueError, match="nodes"):
        SpeculativeConfig(k_config=(8, 8, 8))
