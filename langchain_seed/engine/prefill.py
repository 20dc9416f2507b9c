"""Prefill admitted prompts, computing shared prefixes once.

Tree-of-Thoughts prompts of one step are siblings: k samples of one state are the same
prompt, and k indexed prompts ("option i of k") or k evaluations of sibling states share
most of their text. Prompts are clustered by longest common prefix; each cluster's prefix
is prefilled once, copied to its members, and the members' remaining suffixes are
prefilled together in one batched forward. Every prompt's last token is left out: it is
the pending token that the first verification (or draft step) feeds.

A target verified one sequence per forward ("rounds") prefills less: with `shared_only`
only the prefixes that several prompts share are computed, leaving
each prompt's own remainder to its first verification, which feeds it together with the
first draft, as transformers' assisted generation does. That saves one target forward per
request, most of the cost of a short generation.
"""

from __future__ import annotations

from langchain_seed.engine.cache import BatchKV
from langchain_seed.engine.forward import causal_row, forward_hidden, prefill

MIN_SHARED_PREFIX = 8


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def cluster_by_prefix(token_lists: list[list[int]]) -> list[tuple[int, list[int]]]:
    """Clusters of row indices whose token lists share a prefix: (prefix length, members).

    Adjacent lists in sorted order join a cluster while they keep at least half of its
    prefix (and MIN_SHARED_PREFIX tokens); identical lists always share.
    """
    clusters: list[tuple[int, list[int]]] = []
    for index in sorted(range(len(token_lists)), key=lambda i: token_lists[i]):
        tokens = token_lists[index]
        if clusters:
            length, members = clusters[-1]
            shared = min(length, shared_prefix_length(token_lists[members[0]], tokens))
            if shared == length == len(tokens) or shared >= max(MIN_SHARED_PREFIX, length // 2):
                clusters[-1] = (shared, members + [index])
                continue
        clusters.append((len(tokens), [index]))
    return clusters


def prefill_prompts(model, token_lists: list[list[int]],
                    shared_only: bool = False) -> tuple[list[BatchKV], int, list[int]]:
    """One-row caches holding each token list, in input order; the model forwards made; and
    per list how many of its trailing tokens are not in its cache.

    With `shared_only` only the prefixes that several lists share are computed: each
    list's own remainder stays out of its cache (a list sharing nothing gets an empty one).
    """
    caches: list[BatchKV | None] = [None] * len(token_lists)
    unfilled = [0] * len(token_lists)
    forwards = 0
    for length, members in cluster_by_prefix(token_lists):
        if shared_only and len(members) == 1:
            caches[members[0]] = BatchKV.empty(1)
            unfilled[members[0]] = len(token_lists[members[0]])
            continue
        prefix = token_lists[members[0]][:length]
        kv = prefill(model, prefix)
        forwards += 1 if prefix else 0
        if len(members) > 1:
            kv = kv.repeat_rows(len(members))
        suffixes = [token_lists[m][length:] for m in members]
        if shared_only:
            for member, suffix in zip(members, suffixes):
                unfilled[member] = len(suffix)
        elif any(suffixes):
            forward_hidden(model, kv, [causal_row(s, length) for s in suffixes])
            kv.commit_new_slots(_suffix_validity(suffixes))
            forwards += 1
        for member, row_kv in zip(members, kv.split_rows()):
            caches[member] = row_kv
    return caches, forwards, unfilled


def _suffix_validity(suffixes: list[list[int]]):
    import torch

    width = max(len(s) for s in suffixes)
    valid = torch.zeros(len(suffixes), width, dtype=torch.bool)
    for row, suffix in enumerate(suffixes):
        valid[row, : len(suffix)] = True
    return valid
