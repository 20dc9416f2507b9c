"""Feature drafts (EAGLE-style): a token draft that also reads the target's hidden state.

The draft is an `engine.feature_draft.FeatureDraftModel`: its input at position i also
gets the target's feature (last hidden state) at position i - 1. It starts from a
trained token draft (`--init-draft`) or the target's first layers, with the feature
projection at zero, so it starts as good as its token draft and training teaches it to
read the target's state.

Data: the token draft's prompts and target continuations, plus the target's features
and greedy choices at every position (one batched teacher-forced forward per few
sequences, cached in the work directory). Loss: cross-entropy on the target's greedy
token (over the head) plus a smooth-L1 term pulling the draft's output toward the
target's feature at the same position; a second pass per batch feeds the draft's own
(detached) outputs as the features, as drafting does. Acceptance is replayed exactly as
the engine drafts a chain (`replay_example`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from langchain_seed.engine.drafters import NGramIndex
from langchain_seed.engine.feature_draft import FeatureDraftModel
from langchain_seed.training.measure import (
    AcceptanceTally,
    alternating_costs,
    median_step_ms,
    random_context,
)
from langchain_seed.training.targets import Example, head_index
from langchain_seed.training.token import load_init_draft

PASSES = 2
"""Forward passes per batch: true features, then the draft's own outputs as features."""


@dataclass
class FeatureExample:
    """A sequence with the target's features and greedy choices at every position."""

    ids: torch.Tensor  # [seq] prompt + target output
    n_prompt: int
    features: torch.Tensor  # [seq, hidden] float16: target feature at each position
    argmax: torch.Tensor  # [seq] the target's greedy next token after each position
    shape: str = "?"


def features_key(examples: Sequence[Example]) -> str:
    """A short hash of the examples' tokens: names their features' cache file."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.ids.numpy().tobytes())
        digest.update(str(example.n_prompt).encode())
    return digest.hexdigest()[:16]


def target_features(target: Any, examples: Sequence[Example], cache_dir: Path | None, name: str,
                    batch_size: int = 8, progress: bool = True) -> list[FeatureExample]:
    """The target's features and greedy choices over each example (cached by content)."""
    path = cache_dir / f"{name}-features-{features_key(examples)}.pt" if cache_dir else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        return _with_features(examples, saved["features"], saved["argmax"])
    features: list[Any] = [None] * len(examples)
    argmax: list[Any] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    head = target.get_output_embeddings()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=f"target features ({name})", disable=not progress):
            picked = order[start : start + batch_size]
            width = max(len(examples[i].ids) for i in picked)
            ids = torch.zeros(len(picked), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(picked):
                ids[row, : len(examples[i].ids)] = examples[i].ids
                mask[row, : len(examples[i].ids)] = 1
            hidden = target.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, i in enumerate(picked):
                own = hidden[row, : len(examples[i].ids)]
                features[i], argmax[i] = own.half().clone(), head(own).argmax(-1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": features, "argmax": argmax}, path)
    return _with_features(examples, features, argmax)


def _with_features(examples: Sequence[Example], features: Sequence[Any], argmax: Sequence[Any]) -> list[FeatureExample]:
    return [FeatureExample(e.ids, e.n_prompt, f, a, e.meta.get("shape", "?"))
            for e, f, a in zip(examples, features, argmax)]


def collate(batch: Sequence[FeatureExample], head_index: torch.Tensor, prompt_weight: float) -> dict:
    """Right-padded: tokens, the features before them, target features and choices, weights."""
    width = max(len(e.ids) for e in batch)
    hidden = batch[0].features.shape[-1]
    out = {"ids": torch.zeros(len(batch), width, dtype=torch.long),
           "previous": torch.zeros(len(batch), width, hidden),
           "features": torch.zeros(len(batch), width, hidden),
           "labels": torch.full((len(batch), width), -1, dtype=torch.long),
           "weight": torch.zeros(len(batch), width),
           "mask": torch.zeros(len(batch), width, dtype=torch.long)}
    for row, e in enumerate(batch):
        n = len(e.ids)
        out["ids"][row, :n] = e.ids
        out["previous"][row, 1:n] = e.features[:-1].float()
        out["features"][row, :n] = e.features.float()
        out["labels"][row, :n] = head_index[e.argmax]
        out["mask"][row, :n] = 1
        out["weight"][row, : n - 1] = prompt_weight  # the last position's next token is not in the data
        out["weight"][row, e.n_prompt - 1 : n - 1] = 1.0
    out["weight"] *= out["labels"] >= 0
    return out


def feature_loss(draft: FeatureDraftModel, batch: dict, feature_weight: float) -> torch.Tensor:
    """Mean over `PASSES` of weighted CE (target's choice) + feature_weight x smooth-L1 (its feature)."""
    keep = batch["weight"] > 0
    weight = batch["weight"][keep]
    previous = batch["previous"]
    total = torch.zeros(())
    for _ in range(PASSES):
        outputs = draft(batch["ids"], previous, attention_mask=batch["mask"])  # [batch, seq, hidden]
        logprobs = torch.log_softmax(draft.head_logits(outputs[keep]), dim=-1)
        ce = -logprobs.gather(1, batch["labels"][keep][:, None])[:, 0]
        regression = torch.nn.functional.smooth_l1_loss(outputs[keep], batch["features"][keep],
                                                        reduction="none").mean(-1)
        total = total + ((ce + feature_weight * regression) * weight).sum() / weight.sum().clamp(min=1e-6)
        previous = torch.cat([batch["previous"][:, :1], outputs[:, :-1].detach()], dim=1)
    return total / PASSES


def chain_acceptance(draft: FeatureDraftModel, examples: Sequence[FeatureExample], chain: int = 4,
                     lookup_min_n: int = 0) -> dict:
    """Held-out greedy chain-of-`chain` acceptance by exact replay, as the engine drafts.

    A round at pending token n drafts `chain` tokens: the first from the target's features
    of the committed text, each next one feeding the draft's own output as the feature. It
    accepts the longest run matching the target's continuation and moves past it and the
    bonus token. With `lookup_min_n`, a prompt-lookup hit replaces the draft's choice.
    Counts `chain` drafted tokens per round (accepted / drafted), like the token draft's replay.
    """
    tally = AcceptanceTally()
    with torch.inference_mode():
        for example in examples:
            runs = replay_example(draft, example, chain, lookup_min_n)
            tally.add(example.shape, sum(runs), chain * len(runs))
    return {**tally.summary(), "acceptance_by_shape": tally.by_shape_rates()}


def replay_example(draft: FeatureDraftModel, example: FeatureExample, chain: int = 4,
                   lookup_min_n: int = 0) -> list[int]:
    """Accepted drafted tokens of each round over one example's output (see `chain_acceptance`).

    One cached pass over the whole text with the target's features gives every round's
    first draft; deeper drafts run one token at a time on a copy of that cache cut at the
    round's pending token, so a round costs at most `chain - 1` single-token forwards.
    """
    ids = example.ids.tolist()
    head_ids = torch.tensor(draft.head_token_ids)
    previous = torch.cat([torch.zeros(1, example.features.shape[-1]), example.features[:-1].float()])
    full = DynamicCache()
    outputs = draft(example.ids[None], previous[None], cache=full, use_cache=True)[0]  # [seq, hidden]
    index = NGramIndex()
    runs = []
    n = example.n_prompt - 1
    while n + 1 < len(ids):
        tokens, output, cache, run = ids[: n + 1], outputs[n], None, 0
        while run < chain:
            token = int(head_ids[draft.head_logits(output).argmax()])
            if lookup_min_n:
                index.update(tokens)
                token = index.lookup(tokens[-4:], lookup_min_n) or token
            if n + 1 + run >= len(ids) or token != ids[n + 1 + run]:
                break
            run, tokens = run + 1, tokens + [token]
            if run < chain:
                cache = cache if cache is not None else _cache_prefix(full, n + 1)
                output = draft(torch.tensor([[token]]), output[None, None], cache=cache, use_cache=True,
                               position_ids=torch.tensor([[n + run]]))[0, -1]
        runs.append(run)
        n += run + 1
    return runs


def _cache_prefix(cache: Any, length: int) -> Any:
    """A new `DynamicCache` holding the first `length` positions of `cache` (views, no copy)."""
    prefix = DynamicCache()
    for layer_index, layer in enumerate(cache.layers):
        prefix.update(layer.keys[:, :, :length], layer.values[:, :, :length], layer_index)
    return prefix


def feature_token_ms(draft: FeatureDraftModel, target: Any, context: int = 64, steps: int = 30,
                     repeats: int = 5) -> tuple[float, float]:
    """(draft ms, target ms) per cached single-token forward on the engine's kernels
    (`measure.alternating_costs`)."""
    return alternating_costs(draft, target, lambda: draft_step_ms(draft, context, steps), repeats)


def draft_step_ms(draft: FeatureDraftModel, context: int = 64, steps: int = 30) -> float:
    """Median ms of one cached single-token draft forward fed its own last output."""
    ids = random_context(draft.vocab_size, context)
    head_ids = torch.tensor(draft.head_token_ids)
    with torch.inference_mode():
        cache = DynamicCache(config=draft.config)
        output = draft(ids, torch.zeros(1, context, draft.proj.in_features), cache=cache, use_cache=True)[:, -1:]
        token = ids[:, -1:]

        def step(i: int) -> None:
            nonlocal output, token
            position = torch.tensor([[context + i]])
            output = draft(token, output, cache=cache, use_cache=True, position_ids=position)
            token = head_ids[draft.head_logits(output[:, -1]).argmax(-1)][:, None]

        return median_step_ms(step, steps)


class FeatureDraft:
    """The feature draft's part of `distill` (stages 4-7): target features, init, loss,
    measures, saving. Trains on the CPU."""

    kind = "feature"
    desc = "distill (feature draft)"

    def __init__(self, args: Any, target: Any, head_list: list[int], train: Sequence[Example],
                 heldout: Sequence[Example]) -> None:
        self.args, self.target, self.head_list = args, target, head_list
        self.examples = (train, heldout)
        self.train: list[FeatureExample] = []
        self.heldout: list[FeatureExample] = []
        self.head_index: Any = None

    def prepare(self) -> dict:
        """The target's features over the training and held-out sequences (cached in --work)."""
        args = self.args
        work = Path(args.work) if args.work else None
        started = time.perf_counter()
        self.train = target_features(self.target, self.examples[0], work, "train", progress=args.progress)
        self.heldout = target_features(self.target, self.examples[1], work, "heldout", progress=args.progress)
        return {"seconds_features": time.perf_counter() - started}

    def initial_draft(self, device: Any) -> FeatureDraftModel:
        draft = FeatureDraftModel.from_target(self.target, self.args.layers, self.head_list)
        if self.args.init_draft:
            draft.copy_decoder(load_init_draft(self.args.init_draft, self.target).get_decoder())
        self.head_index = head_index(draft.head_token_ids, draft.vocab_size)
        return draft.to(device)

    def acceptance(self, draft: FeatureDraftModel) -> dict:
        return chain_acceptance(draft, self.heldout, self.args.chain)

    def batch_loss(self, draft: FeatureDraftModel) -> Callable[[Sequence[int]], torch.Tensor]:
        args = self.args
        return lambda picked: feature_loss(
            draft, collate([self.train[i] for i in picked], self.head_index, args.prompt_weight),
            args.feature_weight)

    @staticmethod
    def own_state(draft: FeatureDraftModel) -> dict:
        return draft.own_state()

    def extra_measures(self, draft: FeatureDraftModel) -> dict:
        return {"heldout_with_lookup": chain_acceptance(draft, self.heldout, self.args.chain, lookup_min_n=3)}

    def draft_step_ms(self, draft: FeatureDraftModel) -> Callable[[], float]:
        return lambda: draft_step_ms(draft)

    def report_fields(self, draft: FeatureDraftModel) -> dict:
        return {"kind": "feature", "feature_weight": self.args.feature_weight, "passes": PASSES}

    def save(self, draft: FeatureDraftModel, out: Path) -> int:
        return draft.save(out, getattr(torch, self.args.dtype))
