"""The model drafter: a small causal LM drafting for every sequence of a lane at once.

One batched forward per tree depth, one model instance, one `BatchKV` whose rows are the
sequences. Its LM head can be restricted to a subset of the vocabulary (the target's
most frequent tokens), which is most of a small draft's per-token cost. Greedy nodes
where the model is unsure take prompt lookup's token first (`ngram.PromptLookup`).
"""

from __future__ import annotations

import threading
import weakref

import torch

from langchain_seed.engine.cache import BatchKV
from langchain_seed.engine.drafters.base import Draft
from langchain_seed.engine.drafters.depth import DraftDepth
from langchain_seed.engine.drafters.ngram import PromptLookup
from langchain_seed.engine.forward import (
    RowInput,
    causal_row,
    forward_hidden,
    model_device,
)
from langchain_seed.engine.kernels import linear
from langchain_seed.engine.prefill import prefill_prompts
from langchain_seed.engine.request import SequenceState
from langchain_seed.engine.tree import DraftTree, build_tree
from langchain_seed.engine.verify import Acceptance, greedy_tokens, target_probs_from_logits


class ModelDrafter:
    """A draft language model serving every sequence of a lane in batched forwards.

    Args:
        model: a causal LM sharing the target's vocabulary.
        head_token_ids: optional token ids the draft may propose; its LM head is computed
            over these rows only.
        depth: what verification kept so far, shared by an engine's drafters (`DraftDepth`;
            a private one when None).
    """

    run_model = staticmethod(forward_hidden)
    """One draft forward over the rows: `(model, kv, rows) -> [batch, width, hidden]`."""

    def __init__(self, model, head_token_ids: list[int] | None = None, depth: DraftDepth | None = None) -> None:
        self.model = model
        self.depth = depth if depth is not None else DraftDepth()
        self._offered: dict[int, int] = {}  # per sequence: levels drafted this round
        self.kv = BatchKV.empty(0)
        self.rows: list[SequenceState] = []
        self._node_slots: dict[int, list[int]] = {}
        self.lookup = PromptLookup()
        self.forwards = 0
        self.vocab_size, self.head_ids, self.head_weight, self.int8_head = _head_for(type(self), model, head_token_ids)

    @staticmethod
    def _head_of(model, head_token_ids: list[int] | None):
        """(vocabulary size, head token ids or None for all, head weight `[head, hidden]`, or
        None where the head's 8-bit rows are its own blocks: `_blocks_for_int8_head`). A head
        kept in blocks (`engine.weights`) dequantises only the rows of a restricted head."""
        head = model.get_output_embeddings()
        vocab_size = int(getattr(model.config, "vocab_size", None) or head.out_features)
        ids = None if head_token_ids is None else torch.tensor(sorted(set(head_token_ids)), dtype=torch.long,
                                                               device=model_device(model))
        if _blocks_for_int8_head(model) is not None:
            return vocab_size, ids, None
        if ids is None:
            return vocab_size, None, head.weight.detach()
        if hasattr(head, "rows"):
            return vocab_size, ids, head.rows(ids)
        return vocab_size, ids, head.weight.index_select(0, ids).detach().clone()

    # ----- membership ------------------------------------------------------------
    def add(self, sequences: list[SequenceState]) -> None:
        with torch.inference_mode():
            done = prefill_prompts(self.model, [s.request.prompt_ids[:-1] for s in sequences])
        self.forwards += done.forwards
        self.kv.concat_all(done.caches)
        for sequence in sequences:
            self.rows.append(sequence)
            sequence.draft_pending = 1
            sequence.stats.draft_calls += 1

    def remove(self, sequences: list[SequenceState]) -> None:
        gone = {id(s) for s in sequences}
        keep = [i for i, s in enumerate(self.rows) if id(s) not in gone]
        if len(keep) == len(self.rows):
            return
        self.kv.select_rows(keep)
        self.rows = [self.rows[i] for i in keep]
        for sequence in sequences:
            self._node_slots.pop(id(sequence), None)
            self._offered.pop(id(sequence), None)
            self.lookup.forget(sequence)

    # ----- the draft stage ---------------------------------------------------------
    def draft(self, sequences: list[SequenceState], tree: DraftTree) -> list[Draft]:
        """Draft `tree` for every member: one batched forward per depth.

        A member stops at the first level where the draft is unsure (when its config sets
        `draft_confidence`, see `SpeculativeConfig`) or where the round could reach its
        `max_tokens`; its draft is cut to the levels drafted.
        Stopped members ride along as empty rows; the stage ends when every member stopped.
        """
        if [id(s) for s in sequences] != [id(s) for s in self.rows]:
            raise RuntimeError("ModelDrafter.draft must be given exactly its member sequences, in order")
        drafts = [Draft([0] * tree.size, None if s.params.greedy else self._empty_probs(tree)) for s in sequences]
        slots: list[list[int]] = [[-1] * tree.size for _ in sequences]
        # A round commits at most depth + 1 tokens: drafting past the request's end is waste;
        # nor past where drafts have rarely survived (`DraftDepth`).
        depths = [min(tree.depth, max(1, s.remaining - 1), self._learnt_depth(s, tree)) for s in sequences]
        logits = self._feed_pending(sequences)  # [batch, head]: root distributions
        confidence = self._expand(sequences, tree, drafts, parent_nodes=[-1], logits=logits[:, None, :])
        self._stop_unsure(sequences, confidence, depths, depth=1)
        for depth in range(1, max(depths)):
            going = [d > depth for d in depths]
            if not any(going):
                break
            level = list(tree.level(depth))
            rows = [self._level_row(s, tree, level, slots[i], drafts[i]) if going[i] else _EMPTY_ROW
                    for i, s in enumerate(sequences)]
            first_slot = self.kv.num_slots
            hidden = self._forward(rows)
            self._record_outputs(level, hidden, going)
            # A chain's new node is seen only by its descendants: keep it valid until rejected,
            # so a lone sequence never needs a mask. Tree siblings must not see each other.
            keep = torch.tensor(going, dtype=torch.bool)[:, None] & tree.is_chain
            self.kv.commit_new_slots(keep.expand(len(rows), len(level)).clone())
            for i in range(len(sequences)):
                if going[i]:
                    for j, node in enumerate(level):
                        slots[i][node] = first_slot + j
            confidence = self._expand(sequences, tree, drafts, parent_nodes=level,
                                      logits=self._head(hidden[:, : len(level)]), only=going)
            self._stop_unsure(sequences, confidence, depths, depth=depth + 1)
        for sequence, node_slots, draft, depth in zip(sequences, slots, drafts, depths):
            self._node_slots[id(sequence)] = node_slots
            self._offered[id(sequence)] = depth
            if depth < tree.depth:
                _cut(draft, tree, depth)
        return drafts

    def _record_outputs(self, level: list[int], hidden: torch.Tensor, going: list[bool]) -> None:
        """Hook: the draft's outputs `[batch, width, hidden]` at a level's nodes (-1: the root; unused here)."""

    @staticmethod
    def _stop_unsure(sequences, confidence: list[float], depths: list[int], depth: int) -> None:
        """Members drafting at `depth` whose confidence there is under their threshold stop at it."""
        for i, sequence in enumerate(sequences):
            if depths[i] > depth and confidence[i] < sequence.request.config.draft_confidence:
                depths[i] = depth

    def commit(self, sequence: SequenceState, acceptance: Acceptance) -> None:
        """Keep the slots of accepted nodes; the rest of the round's slots stay invalid."""
        self._learn(sequence, acceptance)
        row = self._row_of(sequence)
        node_slots = self._node_slots.pop(id(sequence), [])
        fed_slots = [slot for slot in node_slots if slot >= 0]
        fed = [node_slots[node] for node in acceptance.path if node_slots and node_slots[node] >= 0]
        self.kv.valid[row, fed_slots] = False
        self.kv.valid[row, fed] = True
        unfed_accepted = len(acceptance.path) - len(fed)
        sequence.draft_pending = unfed_accepted + 1

    def _learnt_depth(self, sequence: SequenceState, tree: DraftTree) -> int:
        """How deep a greedy sequence drafts by what verification kept (`DraftDepth`). A
        sampled one drafts the whole tree: its tokens depend on how its draft is cut, and a
        seed must give the same tokens whatever ran before."""
        if not sequence.params.greedy:
            return tree.depth
        return self.depth.allowed(tree.depth, sequence.request.config.draft_survival)

    def _learn(self, sequence: SequenceState, acceptance: Acceptance) -> None:
        """Tell `self.depth` how much of a greedy sequence's draft was kept."""
        offered = self._offered.pop(id(sequence), 0)
        if offered and sequence.params.greedy:
            self.depth.record(offered, len(acceptance.path))

    def nbytes(self) -> int:
        return self.kv.nbytes()

    def compact_if_needed(self, slack: int) -> None:
        self.kv.trim_tail()
        if self.kv.batch_size and self.kv.slack() > slack:
            self.kv.compact()

    # ----- helpers -----------------------------------------------------------------
    def _row_of(self, sequence: SequenceState) -> int:
        for index, member in enumerate(self.rows):
            if member is sequence:
                return index
        raise KeyError("sequence is not a member of this drafter")

    def _feed_pending(self, sequences: list[SequenceState]) -> torch.Tensor:
        """Feed every member's pending row; returns the root logits `[batch, head]`."""
        rows = [self._pending_row(s) for s in sequences]
        hidden = self._forward(rows)
        counts = [len(r.token_ids) for r in rows]
        new_valid = torch.zeros(len(rows), max(counts), dtype=torch.bool)
        for i, count in enumerate(counts):
            new_valid[i, :count] = True
        self.kv.commit_new_slots(new_valid)
        last = torch.tensor([c - 1 for c in counts], device=hidden.device)
        roots = hidden[torch.arange(len(rows), device=hidden.device), last]  # [batch, hidden]
        self._record_outputs([-1], roots[:, None], [True] * len(rows))
        return self._head(roots)

    def _pending_row(self, sequence: SequenceState) -> RowInput:
        """The tokens committed since the draft last saw this sequence."""
        tokens, first_position = sequence.pending_tokens(sequence.draft_pending)
        return causal_row(tokens, first_position)

    def _level_row(self, sequence, tree: DraftTree, level: list[int], slots: list[int], draft: Draft) -> RowInput:
        base = len(sequence.tokens) - 1
        extra = [] if tree.is_chain else [[slots[a] for a in tree.path_to(node)[:-1]] for node in level]
        visible = torch.eye(len(level), dtype=torch.bool)
        return RowInput([draft.node_tokens[n] for n in level], [base + tree.depths[n] for n in level], visible, extra)

    def _forward(self, rows: list[RowInput]) -> torch.Tensor:
        self.forwards += 1
        for sequence in self.rows:
            sequence.stats.draft_calls += 1
        with torch.inference_mode():
            return self.run_model(self.model, self.kv, rows)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the head's tokens, `[..., head]`."""
        if self.int8_head is not None:
            return self.int8_head(hidden)
        return linear(hidden, self.head_weight)

    def _empty_probs(self, tree: DraftTree) -> torch.Tensor:
        return torch.zeros(1 + tree.size, self.vocab_size)

    def _expand(self, sequences, tree: DraftTree, drafts: list[Draft], parent_nodes: list[int], logits,
                only: list[bool] | None = None) -> list[float]:
        """Choose the children of `parent_nodes` from `logits` `[batch, parents, head]`.

        Returns, per member, the draft's confidence in this level: the highest probability
        of a best candidate among the parents (1.0 where prompt lookup supplied it).
        Members with `only[i]` False are skipped (confidence 1.0, unused).
        """
        confidence = [1.0] * len(sequences)
        plain = self._plain_greedy_picks(sequences, tree, parent_nodes, logits, only)
        for i, sequence in enumerate(sequences):
            if only is not None and not only[i]:
                continue
            best = 0.0
            for j, parent in enumerate(parent_nodes):
                children = tree.children(parent)
                if len(children) == 0:
                    continue
                if plain is not None:
                    picks, tops = plain
                    tokens, sure = self._greedy_candidates(sequence, tree, drafts[i], parent,
                                                           _pad_picks(picks[i][j][: len(children)], len(children)),
                                                           logits[i, j], top=tops[i][j])
                    probs = None
                else:
                    tokens, probs, sure = self._node_candidates(sequence, tree, drafts[i], parent, logits[i, j],
                                                                len(children))
                best = max(best, sure)
                for child, token in zip(children, tokens):
                    drafts[i].node_tokens[child] = token
                if probs is not None:
                    draft_probs = drafts[i].draft_probs
                    assert draft_probs is not None, "a sampled draft starts from _empty_probs"
                    draft_probs[parent + 1] = probs
            confidence[i] = best
        return confidence

    def _plain_greedy_picks(self, sequences, tree: DraftTree, parent_nodes: list[int], logits: torch.Tensor,
                            only: list[bool] | None) -> tuple[list, list] | None:
        """For a level where every member drafting is greedy and unconstrained: each parent's
        best candidates (vocabulary ids, `[batch][parents][k]`) and the draft's top
        probability there (`[batch][parents]`), for the whole batch in one call each (what
        `_choose` and `_top_probability` give per parent); None for any other level."""
        drafting = [s for i, s in enumerate(sequences) if only is None or only[i]]
        if not drafting or any(not s.params.greedy or s.masks is not None for s in drafting):
            return None
        most = max((len(tree.children(parent)) for parent in parent_nodes), default=0)
        if most == 0:
            return None
        # a chain's one candidate by `greedy_tokens` (twice as fast as topk(1) here)
        picks = greedy_tokens(logits)[..., None] if most == 1 else logits.topk(min(most, logits.shape[-1]),
                                                                                 dim=-1).indices
        tops = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
        return self._to_vocab(picks).tolist(), tops.tolist()

    def _choose(self, logits: torch.Tensor, count: int, sequence: SequenceState):
        """`count` candidate tokens from one distribution (`[head]` logits), and that distribution.

        Greedy requests take the top `count` tokens. Sampled requests draw from the draft
        distribution over the whole vocabulary, with or without replacement as the
        acceptance rule expects; when fewer tokens have mass than `count`, the extra
        children repeat the last pick and are never reached by the rule.
        """
        params = sequence.params
        if params.greedy:
            picks = logits.topk(min(count, logits.shape[-1])).indices
            return _pad_picks(self._to_vocab(picks).tolist(), count), None
        probs = self._full_vocab(target_probs_from_logits(logits, params.temperature, params.top_p))
        if sequence.request.config.acceptance == "mcsd_without_replacement":
            draws = min(count, int((probs > 0).sum()))
            picks = torch.multinomial(probs, draws, replacement=False, generator=sequence.generator)
        else:
            picks = torch.multinomial(probs, count, replacement=True, generator=sequence.generator)
        return _pad_picks(picks.tolist(), count), probs

    def _node_candidates(self, sequence: SequenceState, tree: DraftTree, draft: Draft, parent: int,
                         logits: torch.Tensor, count: int) -> tuple[list[int], torch.Tensor | None, float]:
        """`parent`'s `count` candidates from its `[head]` logits, the distribution they were
        drawn from (None: greedy) and the draft's confidence there. A constrained request's
        logits lose the tokens its grammar forbids; where it allows none of the head's
        tokens, the allowed tokens themselves are the candidates."""
        allowed = self._allowed(sequence, tree, draft, parent)
        if allowed is not None:
            in_head = self._in_head(allowed)
            if not bool(in_head.any()):
                tokens, probs = self._choose_outside_head(allowed, count, sequence)
                return tokens, probs, 1.0 / float(allowed.sum())
            logits = logits.masked_fill(~in_head.to(logits.device), float("-inf"))
        tokens, probs = self._choose(logits, count, sequence)
        if probs is not None:
            return tokens, probs, float(probs.max())
        tokens, sure = self._greedy_candidates(sequence, tree, draft, parent, tokens, logits, allowed)
        return tokens, probs, sure

    @staticmethod
    def _allowed(sequence: SequenceState, tree: DraftTree, draft: Draft, parent: int) -> torch.Tensor | None:
        """The grammar's mask `[vocab]` after the committed text and `parent`'s drafted path, for
        a constrained request (None for free text, or where the path already left the grammar)."""
        if sequence.masks is None:
            return None
        path = [draft.node_tokens[node] for node in tree.path_to(parent)] if parent >= 0 else []
        return sequence.masks.allowed(path)

    def _in_head(self, allowed: torch.Tensor) -> torch.Tensor:
        """A `[vocab]` mask restricted to the head's tokens, `[head]`."""
        return allowed if self.head_ids is None else allowed[self.head_ids.cpu()]

    @staticmethod
    def _choose_outside_head(allowed: torch.Tensor, count: int, sequence: SequenceState):
        """Candidates where the grammar allows none of the head's tokens: the allowed tokens in
        id order (greedy; a forced token is the one), or drawn uniformly among them (sampled),
        with that uniform distribution."""
        allowed_ids = allowed.nonzero().flatten()
        if sequence.params.greedy:
            return _pad_picks(allowed_ids[:count].tolist(), count), None
        probs = allowed.float() / allowed.sum()
        if sequence.request.config.acceptance == "mcsd_without_replacement":
            picks = torch.multinomial(probs, min(count, len(allowed_ids)), replacement=False,
                                      generator=sequence.generator)
        else:
            picks = torch.multinomial(probs, count, replacement=True, generator=sequence.generator)
        return _pad_picks(picks.tolist(), count), probs

    def _greedy_candidates(self, sequence: SequenceState, tree: DraftTree, draft: Draft, parent: int,
                           candidates: list[int], logits: torch.Tensor, allowed: torch.Tensor | None = None,
                           top: float | None = None) -> tuple[list[int], float]:
        """A greedy node's candidates, prompt lookup's token first where the draft is unsure,
        and the confidence they carry: the model's top probability (`[head]` logits; `top`
        when the caller has it), or 1.0 for a lookup hit or when nothing reads it (no
        `draft_confidence`, full lookup). A lookup token the grammar forbids (`allowed`,
        `[vocab]`) is not taken."""
        config = sequence.request.config
        always_look_up = config.prompt_lookup_below >= 1.0
        if always_look_up and not config.draft_confidence:
            top = 1.0  # nothing reads it
        elif top is None:
            top = _top_probability(logits)
        if always_look_up or top < config.prompt_lookup_below:
            looked_up = self._with_lookup(sequence, tree, draft, parent, candidates)
            if looked_up[0] != candidates[0] and (allowed is None or bool(allowed[looked_up[0]])):
                return looked_up, 1.0
        return candidates, top if config.draft_confidence else 1.0

    def _with_lookup(self, sequence: SequenceState, tree: DraftTree, draft: Draft, parent: int,
                     candidates: list[int]) -> list[int]:
        """Put the prompt-lookup token (if any) first among a greedy node's candidates."""
        min_n = sequence.request.config.prompt_lookup
        if min_n == 0:
            return candidates
        path = [draft.node_tokens[node] for node in tree.path_to(parent)] if parent >= 0 else []
        token = self.lookup.propose(sequence, path, min_n)
        if token is None or token == candidates[0]:
            return candidates
        return [token] + [c for c in candidates if c != token][: len(candidates) - 1]

    def _full_vocab(self, head_probs: torch.Tensor) -> torch.Tensor:
        """Head probabilities `[head]` placed in a `[vocab]` tensor on the CPU."""
        head_probs = head_probs.float().cpu()
        if self.head_ids is None:
            return head_probs[: self.vocab_size].clone()
        full = torch.zeros(self.vocab_size)
        full[self.head_ids.cpu()] = head_probs
        return full

    def _to_vocab(self, indices: torch.Tensor) -> torch.Tensor:
        return indices if self.head_ids is None else self.head_ids.to(indices.device)[indices]


_EMPTY_ROW = RowInput([], [], torch.zeros(0, 0, dtype=torch.bool))
"""A member that stopped drafting: no new tokens (its row is all padding in the forward)."""


def _cut(draft: Draft, tree: DraftTree, depth: int) -> None:
    """Cut `draft` to the first `depth` levels of `tree`."""
    draft.tree = build_tree(tree.k_config[:depth])
    draft.node_tokens = draft.node_tokens[: draft.tree.size]
    if draft.draft_probs is not None:
        draft.draft_probs = draft.draft_probs[: 1 + draft.tree.size]


def _top_probability(logits: torch.Tensor) -> float:
    """The highest softmax probability of `[head]` logits."""
    return float(torch.softmax(logits.float(), dim=-1).max())


def _pad_picks(picks: list[int], count: int) -> list[int]:
    return picks + picks[-1:] * (count - len(picks))


_heads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_heads_lock = threading.Lock()


def _head_for(drafter_class, model, head_token_ids: list[int] | None):
    """`ModelDrafter._head_of` and `_int8_head`, built once per draft model and token ids: a
    one-at-a-time engine makes a drafter per request, and a restricted head costs 5 ms to
    dequantise (50 ms to quantise for an int8 draft)."""
    key = (drafter_class, None if head_token_ids is None else tuple(sorted(set(head_token_ids))))
    with _heads_lock:
        built = _heads.setdefault(model, {})
        if key not in built:
            vocab_size, ids, weight = drafter_class._head_of(model, head_token_ids)
            built[key] = (vocab_size, ids, weight, _int8_head(model, ids, weight))
        return built[key]


def _blocks_for_int8_head(model):
    """The LM head of a draft whose layers take 8-bit activations, where its weight is kept
    in GGML blocks the 8-bit kernels read: the default draft's (the target's Q8_0 embedding,
    a `QuantizedLinear`), or with 8-bit activations in the target too the target's head
    itself (an `Int8Linear`, its blocks repacked); else None."""
    from langchain_seed.engine.native import INT8_GROUP_BYTES
    from langchain_seed.engine.weights.convert import has_int8_activations
    from langchain_seed.engine.weights.int8_dot import Int8Linear
    from langchain_seed.engine.weights.modules import QuantizedLinear

    if not has_int8_activations(model) or not hasattr(model, "get_output_embeddings"):
        return None
    head = model.get_output_embeddings()
    if type(head) is Int8Linear:
        return head if head.bias is None and head.groups.is_cpu else None
    if type(head) is not QuantizedLinear or head.bias is not None or head.fmt not in INT8_GROUP_BYTES \
            or not head.blocks.is_cpu:
        return None
    return head


def _int8_head(model, head_ids: torch.Tensor | None, head_weight: torch.Tensor | None):
    """A draft whose layers take 8-bit activations (`engine.weights.int8_dot`) computes its
    head the same way: on the head's own blocks of the head's rows where the 8-bit kernels
    read them (`_blocks_for_int8_head`: no float32 copy of the rows is ever made), else on
    `head_weight` quantised to Q8_0; None for any other draft."""
    from langchain_seed.engine.weights.convert import has_int8_activations
    from langchain_seed.engine.weights.formats import quantize
    from langchain_seed.engine.weights.int8_dot import Int8Linear, unpack_rows

    head = _blocks_for_int8_head(model)
    if isinstance(head, Int8Linear):
        if head_ids is None:
            return head
        return Int8Linear.from_blocks(unpack_rows(head.groups, head.fmt, head.in_features, head_ids.cpu()),
                                      head.fmt, head.in_features)
    if head is not None:
        blocks = head.blocks if head_ids is None else head.blocks.index_select(0, head_ids.cpu())
        return Int8Linear.from_blocks(blocks, head.fmt, head.in_features)
    if head_weight is None or not has_int8_activations(model) or head_weight.shape[-1] % 32 or not head_weight.is_cpu:
        return None
    return Int8Linear.from_blocks(quantize(head_weight, "q8_0"), "q8_0", head_weight.shape[-1])
