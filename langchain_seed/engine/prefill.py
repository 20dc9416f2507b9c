"""Prefill admitted prompts, computing shared prefixes once.

Tree-of-Thoughts prompts of one step are siblings: k samples of one state are the same
prompt, and k indexed prompts ("option i of k") or k evaluations of sibling states share
most of their text. Prompts are clustered by longest common prefix; each cluster's prefix
is prefilled once, copied to its members, and the members' remaining suffixes are
prefilled together in one batched forward. Every prompt's last token is left out: it is
the pending token that the first verification (or draft step) feeds.

For a model that keeps a store of earlier prompts (`engine.prefix_cache`: 8-bit
activations), prefixes come from it where one shares at least `prefix_cache.MIN_REUSE`
tokens, and go into it.

A prompt's own text (past the prefix its cluster shares; a lone prompt's whole text) of
at most `pending_up_to` tokens is not prefilled at all (with a store, a lone prompt's
only up to `BATCHED_PENDING_MAX` tokens, or past a stored prefix; a longer one is
prefilled and stored): it stays pending for the
sequence's first verification, which feeds it together with the first draft, as
transformers' assisted generation does. That saves a target forward, most of the cost of a
short generation: one per request where each sequence is verified alone ("rounds", any
length), one per group of siblings where sequences are verified in one batch (there, up to
`BATCHED_PENDING_MAX` tokens, because the batch's forward pads every row to its longest).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from langchain_seed.engine.cache import BatchKV
from langchain_seed.engine.forward import causal_row, forward_hidden, prefill
from langchain_seed.engine.prefix_cache import prefill_cached, shared_prefix_length, store_for

MIN_SHARED_PREFIX = 8
BATCHED_PENDING_MAX = 32
"""Own text a batched lane leaves for the first verification (longer text is prefilled)."""


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


@dataclass
class Prefilled:
    """What `prefill_prompts` made, per token list in input order.

    Attributes:
        caches: one-row caches.
        forwards: model forwards made (for all lists together).
        unfilled: how many trailing tokens of each list are not in its cache.
        features: the model's features (`[cached tokens, hidden]`) of each list when asked
            for, else None.
    """

    caches: list[BatchKV]
    forwards: int
    unfilled: list[int]
    features: list[torch.Tensor | None] | None = None


def prefill_prompts(model, token_lists: list[list[int]], pending_up_to: int = 0,
                    with_features: bool = False) -> Prefilled:
    """Prefill every token list, computing shared prefixes once.

    Own text (past the cluster's shared prefix; a lone list's whole text) of at most
    `pending_up_to` tokens in every member of a cluster stays out of the caches
    (`Prefilled.unfilled`; a lone list gets an empty cache). With `with_features` the
    model's features at every cached token come back too.
    """
    caches: list[BatchKV | None] = [None] * len(token_lists)
    done = Prefilled([], 0, [0] * len(token_lists), [None] * len(token_lists) if with_features else None)
    for length, members in cluster_by_prefix(token_lists):
        if len(members) == 1 and len(token_lists[members[0]]) <= pending_up_to and not with_features:
            caches[members[0]], done.unfilled[members[0]], forwards = _lone_prompt(model, token_lists[members[0]])
            done.forwards += forwards
            continue
        prefix = token_lists[members[0]][:length]
        if with_features:
            kv, prefix_features = prefill(model, prefix, with_features)
            done.forwards += 1 if prefix else 0
        else:
            (kv, forwards), prefix_features = prefill_cached(model, prefix), None
            done.forwards += forwards
        suffixes = [token_lists[m][length:] for m in members]
        suffix_features = None
        if max(len(s) for s in suffixes) <= pending_up_to or not any(suffixes):
            for member, suffix in zip(members, suffixes):
                done.unfilled[member] = len(suffix)
            # the members read the prefix until their batch copies it: views of it, no copy
            rows = kv.row_views(len(members))
        else:
            if len(members) > 1:
                kv = kv.repeat_rows(len(members), room=max(len(s) for s in suffixes))
            suffix_features = forward_hidden(model, kv, [causal_row(s, length) for s in suffixes])
            kv.commit_new_slots(_suffix_validity(suffixes))
            done.forwards += 1
            rows = kv.split_rows()
        for row, (member, row_kv) in enumerate(zip(members, rows)):
            caches[member] = row_kv
            if done.features is not None:
                own = suffix_features[row, : len(suffixes[row])] if suffix_features is not None else None
                done.features[member] = _join([prefix_features, own])
    # the clusters partition the lists, so every one got its cache
    done.caches = [kv for kv in caches if kv is not None]
    return done


def _lone_prompt(model, tokens: list[int]) -> tuple[BatchKV, int, int]:
    """(cache, tokens left pending, forwards) for a prompt alone in its cluster that may stay
    pending: short text stays pending whole; a longer one takes the model's stored prompt
    prefix (`engine.prefix_cache`) and leaves the rest pending, or without one is prefilled
    and stored for the prompts that follow."""
    store = store_for(model)
    if len(tokens) <= BATCHED_PENDING_MAX or store is None:
        return BatchKV.empty(1), len(tokens), 0
    shared, kv = store.longest(tokens)
    if kv is not None:
        return kv, len(tokens) - shared, 0
    kv, forwards = prefill_cached(model, tokens)
    return kv, 0, forwards


def _join(chunks: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [c for c in chunks if c is not None and c.shape[0]]
    return torch.cat(present) if present else None


def _suffix_validity(suffixes: list[list[int]]):
    width = max(len(s) for s in suffixes)
    valid = torch.zeros(len(suffixes), width, dtype=torch.bool)
    for row, suffix in enumerate(suffixes):
        valid[row, : len(suffix)] = True
    return valid
