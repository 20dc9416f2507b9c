"""Pure acceptance rules: which drafted tokens the target keeps, and the token it adds.

Every rule walks the draft tree from the root. At each node the target's distribution
over the next token is compared with the candidates (the node's children):

- greedy: accept the child equal to the target's argmax; else stop with the argmax
  (the recovered token);
- speculative sampling / MCSD: try the children in order, accept candidate x with
  probability min(1, target_probs[x] / draft_probs[x]); after a rejection the target
  distribution becomes the normalised residual max(0, target_probs - draft_probs) and,
  without replacement, x leaves the draft distribution. When every child is rejected,
  the recovered token is sampled from the residual.

Reaching a leaf, the target's distribution at the leaf gives the bonus token. Each rule
returns the accepted path and that one extra token, so that the output is the target's
own greedy output (greedy) or follows the target's distribution (sampling). Randomness
comes only from the request's `torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from langchain_seed.engine.tree import DraftTree


@dataclass(frozen=True)
class Acceptance:
    """Outcome of verifying one draft tree.

    Attributes:
        path: accepted nodes, from depth 1 down.
        next_token: the recovered token (first rejection) or bonus token (leaf reached).
    """

    path: list[int]
    next_token: int


def target_probs_from_logits(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Softmax of `logits / temperature`, restricted to the top-p nucleus and renormalised.

    logits: `[..., vocab]`. Returns float32 probabilities of the same shape.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    nucleus = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return nucleus / nucleus.sum(dim=-1, keepdim=True)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The argmax over the last dimension, the first index among ties (as `argmax`), `[...]`
    int64 for `[..., vocab]` logits. `max` finds it in 0.6x of `argmax`'s time on the CPU."""
    return logits.max(dim=-1).indices


def greedy_step(candidates: list[int], target_logits: torch.Tensor | int) -> tuple[int | None, int]:
    """Index of the candidate equal to the target's argmax (or None), and that argmax.

    target_logits: `[vocab]`, or its argmax already taken.
    """
    best = target_logits if isinstance(target_logits, int) else int(target_logits.argmax())
    for index, token in enumerate(candidates):
        if token == best:
            return index, best
    return None, best


def sampling_step(
    candidates: list[int],
    draft_probs: torch.Tensor,  # [vocab]
    target_probs: torch.Tensor,  # [vocab]
    generator: torch.Generator,
    without_replacement: bool = False,
) -> tuple[int | None, torch.Tensor]:
    """Multi-candidate speculative sampling at one node.

    Returns the index of the accepted candidate (None if all were rejected) and the
    target distribution left at that point (the residual to sample from on rejection).
    With one candidate this is the speculative sampling rule of Leviathan et al.
    """
    for index, token in enumerate(candidates):
        draft_p = float(draft_probs[token])
        target_p = float(target_probs[token])
        if draft_p > 0 and float(torch.rand((), generator=generator)) * draft_p < target_p:
            return index, target_probs
        residual = (target_probs - draft_probs).clamp_min_(0.0)
        mass = float(residual.sum())
        if mass <= 0.0:  # draft_probs >= target_probs everywhere: only rounding can get here
            break
        target_probs = residual / mass
        if without_replacement:
            draft_probs = draft_probs.clone()
            draft_probs[token] = 0.0
            remaining = float(draft_probs.sum())
            if remaining <= 0.0:
                break
            draft_probs = draft_probs / remaining
    return None, target_probs


def sample_token(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token drawn from `probs` (`[vocab]`)."""
    return int(torch.multinomial(probs, 1, generator=generator))


def accept_greedy(tree: DraftTree, node_tokens: list[int], target_logits: torch.Tensor | list[int]) -> Acceptance:
    """Greedy verification of a draft tree.

    node_tokens: the drafted token of each node. target_logits: `[1 + size, vocab]`, row 0
    at the root (last committed token), row 1 + i at node i; or each row's argmax already
    taken (`greedy_tokens`).
    """
    path: list[int] = []
    node = -1
    best_tokens = target_logits if isinstance(target_logits, list) else greedy_tokens(target_logits).tolist()
    while True:
        children = tree.children(node)
        index, best = greedy_step([node_tokens[c] for c in children], best_tokens[node + 1])
        if index is None:
            return Acceptance(path, best)
        node = children[index]
        path.append(node)


def accept_sampling(
    tree: DraftTree,
    node_tokens: list[int],
    draft_probs: torch.Tensor,  # [1 + size, vocab]; row 1 + i is the draft distribution at node i
    target_probs: torch.Tensor,  # [1 + size, vocab]
    generator: torch.Generator,
    without_replacement: bool = False,
) -> Acceptance:
    """Speculative sampling (chain) or MCSD (tree) verification of a draft tree.

    Children of a node must have been drawn from `draft_probs` at that node: independently
    (with replacement) or one after another without replacement, matching the flag.
    """
    path: list[int] = []
    node = -1
    while True:
        children = tree.children(node)
        if len(children) == 0:
            return Acceptance(path, sample_token(target_probs[node + 1], generator))
        index, residual = sampling_step(
            [node_tokens[c] for c in children], draft_probs[node + 1], target_probs[node + 1],
            generator, without_replacement,
        )
        if index is None:
            return Acceptance(path, sample_token(residual, generator))
        node = children[index]
        path.append(node)
