"""The verify and commit stages of decoding, shared by every mode.

Autoregressive decoding is verification of an empty draft tree; speculative decoding of
one sequence is a lane with one member; the scheduler runs the same stages for many. So
there is one mechanism, and every mode gets the target's own output by construction:

- `verify_batch`: one target forward over each row's pending tokens and draft tree, then
  the acceptance rule per row;
- `commit_tokens`: append the accepted tokens and the recovered/bonus token, stopping at
  EOS, a stop token, `max_tokens`, the stop callback or a completed grammar.

A constrained request's row is verified under its grammar's masks (`constrained_logits`):
the target's logits at the root and at every drafted node lose the tokens the grammar
forbids there, so the rule accepts and samples from the masked, renormalised target
distribution, the one constrained autoregressive decoding samples from.
"""

from __future__ import annotations

import torch

from langchain_seed.engine.cache import BatchKV
from langchain_seed.engine.constraints import mask_logits
from langchain_seed.engine.drafters import Draft
from langchain_seed.engine.forward import RowInput, captured_features, forward_logits
from langchain_seed.engine.request import SequenceState
from langchain_seed.engine.tree import DraftTree
from langchain_seed.engine.verify import (
    Acceptance,
    accept_greedy,
    accept_sampling,
    greedy_tokens,
    target_probs_from_logits,
)


def verification_row(sequence: SequenceState, tree: DraftTree, draft: Draft | None) -> RowInput:
    """Pending tokens followed by the draft tree, with tree attention."""
    pending, first_position = sequence.pending_tokens(sequence.target_pending)
    nodes = draft.node_tokens if draft is not None else []
    offsets = tree.position_offsets(len(pending)) + first_position
    return RowInput(pending + nodes, offsets.tolist(), tree.verification_visibility(len(pending)))


def verify_batch(
    target_model,
    kv: BatchKV,
    sequences: list[SequenceState],
    drafts: list[Draft | None],
    tree: DraftTree,
    acceptance_rule: str,
    keep_features: bool = False,
) -> list[Acceptance]:
    """Score every row's draft in one target forward and apply the acceptance rule.

    `tree` is the lane's tree; a draft cut short (`Draft.tree`) is verified as cut.

    Updates the cache so that each row keeps its pending tokens and accepted nodes only.
    With `keep_features`, the target's features at those kept positions are appended to
    each sequence's `target_features` (for a feature-conditioned drafter).
    """
    trees = [draft.tree_or(tree) if draft is not None else tree for draft in drafts]
    rows = [verification_row(s, t, d) for s, t, d in zip(sequences, trees, drafts)]
    skip = min(s.target_pending for s in sequences) - 1  # pending tokens before the root need no logits
    with torch.inference_mode(), captured_features(target_model, keep_features) as features:
        logits = forward_logits(target_model, kv, rows, skip_first=skip)  # [batch, width - skip, vocab]
    new_valid = torch.zeros(len(rows), skip + logits.shape[1], dtype=torch.bool)
    # every plain greedy row's argmax in one call: [batch, width - skip]
    best = greedy_tokens(logits) if any(_plain_greedy(s) for s in sequences) else None
    results = []
    for i, (sequence, row_tree, draft) in enumerate(zip(sequences, trees, drafts)):
        pending = sequence.target_pending
        kept = slice(pending - 1 - skip, pending - skip + row_tree.size)  # the root and the nodes
        acceptance = accept_row(sequence, row_tree, draft, logits[i, kept], acceptance_rule,
                                best[i, kept].tolist() if best is not None else None)
        new_valid[i, :pending] = True
        new_valid[i, [pending + node for node in acceptance.path]] = True
        record_verification(sequence, row_tree, acceptance)
        if features:
            sequence.target_features.append(features[0][i][new_valid[i]])  # [pending + accepted, hidden]
        results.append(acceptance)
    kv.commit_new_slots(new_valid)
    return results


def _plain_greedy(sequence: SequenceState) -> bool:
    """Greedy without a grammar: its rows need only the target's argmax."""
    return sequence.params.greedy and sequence.masks is None


def accept_row(sequence: SequenceState, tree: DraftTree, draft: Draft | None, row_logits, rule: str,
               best_tokens: list[int] | None = None) -> Acceptance:
    """Apply the request's acceptance rule to one row. row_logits: `[1 + nodes, vocab]`;
    best_tokens: their argmax per row where the caller took it (`greedy_tokens`), which a
    greedy row without a grammar uses as it is."""
    params = sequence.params
    node_tokens = draft.node_tokens if draft is not None else []
    if _plain_greedy(sequence) and best_tokens is not None:
        return accept_greedy(tree, node_tokens, best_tokens)
    if sequence.masks is not None:
        row_logits = constrained_logits(sequence, tree, node_tokens, row_logits)
    if params.greedy:
        return accept_greedy(tree, node_tokens, row_logits)
    target_probs = target_probs_from_logits(row_logits, params.temperature, params.top_p).cpu()
    if draft is None:
        draft_probs = torch.zeros(1, target_probs.shape[-1])
    else:
        assert draft.draft_probs is not None, "a sampled request's draft carries its distributions"
        draft_probs = draft.draft_probs
    without_replacement = rule == "mcsd_without_replacement"
    return accept_sampling(tree, node_tokens, draft_probs, target_probs, sequence.generator, without_replacement)


def constrained_logits(sequence: SequenceState, tree: DraftTree, node_tokens: list[int],
                       row_logits: torch.Tensor) -> torch.Tensor:
    """The row's logits `[1 + nodes, vocab]` under the grammar: row 0 masked after the committed
    text, row 1 + i after the committed text and node i's path. A node whose path leaves the
    grammar keeps its logits: its token has probability 0 under its parent's mask, so no rule
    ever reaches it."""
    masks = sequence.masks
    assert masks is not None
    paths = [[node_tokens[n] for n in tree.path_to(node)] for node in range(tree.size)]
    return mask_logits(row_logits, [masks.allowed(())] + [masks.allowed(path) for path in paths])


def record_verification(sequence: SequenceState, tree: DraftTree, acceptance: Acceptance) -> None:
    stats = sequence.stats
    stats.target_calls += 1
    stats.verify_steps += 1
    stats.drafted += tree.depth
    stats.accepted += len(acceptance.path)
    stats.draft_nodes += tree.size


def accepted_tokens(tree: DraftTree, draft: Draft | None, acceptance: Acceptance) -> list[int]:
    """The tokens a round commits: accepted draft tokens, then the recovered or bonus token."""
    drafted = [draft.node_tokens[node] for node in acceptance.path] if draft is not None else []
    return drafted + [acceptance.next_token]


def commit_tokens(sequence: SequenceState, tokens: list[int]) -> list[int]:
    """Append `tokens` to the sequence, stopping where the request must end.

    Returns the tokens actually committed (the stream's next chunk). Sets
    `finish_reason` when the sequence is done; an exception from the stop callback fails
    the sequence (finish_reason "error") without touching any other.
    """
    committed: list[int] = []
    masks = sequence.masks
    for token in tokens:
        sequence.tokens.append(token)
        committed.append(token)
        if masks is not None:
            masks.commit([token])
            sequence.stats.mask_seconds = masks.mask_seconds
            if masks.finished and token not in sequence.stop_token_ids:
                sequence.finish_reason = "stop"
                break
        if token in sequence.stop_token_ids:
            sequence.finish_reason = "stop"
            break
        if sequence.remaining <= 0:
            sequence.finish_reason = "length"
            break
    sequence.target_pending = 1
    sequence.stats.new_tokens = len(sequence.tokens) - sequence.prompt_len
    callback = sequence.params.stop_callback
    if callback is not None and sequence.finish_reason is None:
        try:
            if callback(sequence.output_ids):
                sequence.finish_reason = "stop"
        except Exception as error:
            sequence.finish_reason = "error"
            sequence.error = error
    return committed
