"""`langchain-seed distill --kind feature`: train a feature draft (EAGLE-style) for a target.

The draft is an `engine.feature_draft.FeatureDraftModel`: a token draft whose input at
position i also gets the target's feature (last hidden state) at position i - 1. It
starts from a trained token draft (`--init-draft`) or the target's first layers, with
the feature projection at zero, so it starts as good as its token draft and training
teaches it to read the target's state.

Data: the same prompts and target continuations as the token draft (`distill`), plus the
target's features and greedy choices at every position of every sequence (one batched
teacher-forced target forward per few sequences, cached in the work directory). Loss:
cross-entropy on the target's greedy token (over the restricted head) plus a smooth-L1
term pulling the draft's output toward the target's feature at the same position (the
draft feeds its outputs back in place of features deeper in a draft). A second pass per
batch feeds the draft's own (detached) outputs as the features, as drafting does.

Measured like the token draft: held-out chain-of-4 greedy acceptance by exact replay
(each round drafts 4 tokens, feeding its own outputs, from the target's features of the
committed text), and the per-token cost of one cached forward against the target's.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from langchain_seed.engine.drafters import NGramIndex
from langchain_seed.engine.feature_draft import FeatureDraftModel

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


def features_key(examples: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.ids.numpy().tobytes())
        digest.update(str(example.n_prompt).encode())
    return digest.hexdigest()[:16]


def target_features(target: Any, examples: Sequence[Any], cache_dir: Path | None, name: str,
                    batch_size: int = 8, progress: bool = True) -> list[FeatureExample]:
    """The target's features and greedy choices over each example (cached by content)."""
    path = cache_dir / f"{name}-features-{features_key(examples)}.pt" if cache_dir else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        return _with_features(examples, saved["features"], saved["argmax"])
    from tqdm.auto import tqdm

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


def _with_features(examples: Sequence[Any], features: Sequence[Any], argmax: Sequence[Any]) -> list[FeatureExample]:
    return [FeatureExample(e.ids, e.n_prompt, f, a, e.meta.get("shape", "?"))
            for e, f, a in zip(examples, features, argmax)]


def _collate(batch: Sequence[FeatureExample], head_index: torch.Tensor, prompt_weight: float) -> dict:
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


def train_feature_draft(draft: FeatureDraftModel, examples: Sequence[FeatureExample], head_index: torch.Tensor,
                        steps: int, batch_size: int, lr: float, prompt_weight: float, feature_weight: float,
                        seed: int, progress: bool = True) -> list[float]:
    """AdamW with warmup + cosine decay over shuffled epochs (`distill.fit`); returns the loss curve."""
    from langchain_seed.distill import fit

    return fit(draft, len(examples), lambda picked: feature_loss(
        draft, _collate([examples[i] for i in picked], head_index, prompt_weight), feature_weight),
        steps, batch_size, lr, seed, "distill (feature draft)", progress)


def chain_acceptance(draft: FeatureDraftModel, examples: Sequence[FeatureExample], chain: int = 4,
                     lookup_min_n: int = 0) -> dict:
    """Held-out greedy chain-of-`chain` acceptance by exact replay, as the engine drafts.

    A round at pending token n drafts `chain` tokens: the first from the target's features
    of the committed text, each next one feeding the draft's own output as the feature. It
    accepts the longest run matching the target's continuation and moves past it and the
    bonus token. With `lookup_min_n`, a prompt-lookup hit replaces the draft's choice.
    Counts `chain` drafted tokens per round (accepted / drafted), like the token draft's replay.
    """
    accepted = drafted = 0
    by_shape: dict[str, list[int]] = {}
    with torch.inference_mode():
        for example in examples:
            runs = replay_example(draft, example, chain, lookup_min_n)
            accepted, drafted = accepted + sum(runs), drafted + chain * len(runs)
            shape = by_shape.setdefault(example.shape, [0, 0])
            shape[0], shape[1] = shape[0] + sum(runs), shape[1] + chain * len(runs)
    return {"acceptance_rate": accepted / max(1, drafted), "accepted": accepted, "drafted": drafted,
            "acceptance_by_shape": {k: v[0] / max(1, v[1]) for k, v in sorted(by_shape.items())}}


def replay_example(draft: FeatureDraftModel, example: FeatureExample, chain: int = 4,
                   lookup_min_n: int = 0) -> list[int]:
    """Accepted drafted tokens of each round over one example's output (see `chain_acceptance`).

    One cached pass over the whole text with the target's features gives every round's
    first draft; deeper drafts run one token at a time on a copy of that cache cut at the
    round's pending token, so a round costs at most `chain - 1` single-token forwards.
    """
    from transformers import DynamicCache

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
    from transformers import DynamicCache

    prefix = DynamicCache()
    for layer_index, layer in enumerate(cache.layers):
        prefix.update(layer.keys[:, :, :length], layer.values[:, :, :length], layer_index)
    return prefix


def feature_token_ms(draft: FeatureDraftModel, target: Any, context: int = 64, steps: int = 30,
                     repeats: int = 5) -> tuple[float, float]:
    """(draft ms, target ms) per cached single-token forward on the engine's kernels
    (`distill.alternating_costs`)."""
    from langchain_seed.distill import alternating_costs

    return alternating_costs(draft, target, lambda: _draft_step_ms(draft, context, steps), repeats)


def _draft_step_ms(draft: FeatureDraftModel, context: int, steps: int) -> float:
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, draft.vocab_size, (1, context), generator=generator)
    hidden = draft.proj.in_features
    head_ids = torch.tensor(draft.head_token_ids)
    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=draft.config)
        output = draft(ids, torch.zeros(1, context, hidden), cache=cache, use_cache=True)[:, -1:]
        token = ids[:, -1:]
        for i in range(steps + 3):
            start = time.perf_counter()
            position = torch.tensor([[context + i]])
            output = draft(token, output, cache=cache, use_cache=True, position_ids=position)
            token = head_ids[draft.head_logits(output[:, -1]).argmax(-1)][:, None]
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ------------------------------------------------------------------------ the stage


def distill_feature(args: Any, target: Any, train_examples: Sequence[Any], heldout_examples: Sequence[Any],
                    head_list: list[int], data: dict) -> dict:
    """Stages 4-7 of `distill` for a feature draft; returns the report (card written)."""
    from langchain_seed.distill import load_init_draft

    work = Path(args.work) if args.work else None
    started = time.perf_counter()
    train = target_features(target, train_examples, work, "train", progress=args.progress)
    heldout = target_features(target, heldout_examples, work, "heldout", progress=args.progress)
    seconds_features = time.perf_counter() - started
    draft = FeatureDraftModel.from_target(target, args.layers, head_list)
    if args.init_draft:
        draft.copy_decoder(load_init_draft(args.init_draft).get_decoder())
    head_index = torch.full((draft.vocab_size,), -1, dtype=torch.long)
    head_index[torch.tensor(draft.head_token_ids)] = torch.arange(len(draft.head_token_ids))
    before = chain_acceptance(draft, heldout, args.chain)
    started = time.perf_counter()
    losses = train_feature_draft(draft, train, head_index, args.steps, args.batch_size, args.lr,
                                 args.prompt_weight, args.feature_weight, args.seed, args.progress)
    seconds_train = time.perf_counter() - started
    with torch.no_grad():  # measure the weights as saved
        for tensor in draft.own_state().values():
            tensor.copy_(tensor.to(getattr(torch, args.dtype)).float())
    after = chain_acceptance(draft, heldout, args.chain)
    with_lookup = chain_acceptance(draft, heldout, args.chain, lookup_min_n=3)
    draft_ms, target_ms = feature_token_ms(draft, target)
    out = Path(args.out)
    report = {**data, "kind": "feature", "layers": args.layers, "head_size": len(draft.head_token_ids),
              "params_own": sum(t.numel() for t in draft.own_state().values()),
              "feature_weight": args.feature_weight, "passes": PASSES,
              "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "seconds_features": seconds_features,
              "seconds_train": seconds_train, "heldout_before": before, "heldout_after": after,
              "heldout_with_lookup": with_lookup, "draft_ms": draft_ms, "target_ms": target_ms,
              "losses_every_10": losses[::10]}
    report["shipped_bytes"] = draft.save(out, getattr(torch, args.dtype))
    write_feature_card(out, report)
    report["shipped_bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    write_feature_card(out, report)
    return report


def write_feature_card(out: Path, report: dict) -> None:
    """The feature draft's model card (README.md beside its weights)."""
    from langchain_seed.distill import card_cost_and_command

    r = report
    after, lookup = r["heldout_after"], r["heldout_with_lookup"]
    start = f"the trained token draft `{r['init_draft']}`" if r["init_draft"] else "the target's first layers"
    lines = [
        f"# {r['name']}",
        "",
        f"A feature draft (EAGLE-style, `langchain_seed.engine.FeatureDraftModel`) for `{r['target_name']}`: "
        f"{r['layers']} decoder layers of the target's architecture whose input at each position is the "
        "token's embedding plus a learned projection of the target's last hidden state at the position "
        f"before. The target's embedding and its LM head restricted to {r['head_size']} token ids "
        "(`head_token_ids.json`) are taken from the target when the draft is assembled, not shipped.",
        "",
        "## Size",
        "",
        f"- own parameters: {r['params_own']:,} (decoder layers, final norm, feature projection)",
        f"- shipped: {r['shipped_bytes'] / 1e6:.1f} MB (`feature_draft.safetensors` in {r['dtype']}, "
        "config, head ids, this card)",
        "",
        "## Training data",
        "",
        f"- GSM8K test split (Cobbe et al. 2021, MIT licence), file `{r['data']}` ({r['n_questions']} questions).",
        f"- held out, never trained on: questions {r['heldout_range']} (the first {r['heldout']} lines).",
        f"- trained on questions {r['train_range']}: {r['n_train_sequences']} Tree-of-Thoughts prompts "
        f"(shapes {r['shape_counts']}), {r['train_output_tokens']:,} target output tokens, "
        f"{r['train_prompt_tokens']:,} prompt tokens; the target's greedy continuations (up to "
        f"{r['train_max_new_tokens']} new tokens) and its features and greedy choices at every position.",
        "",
        "## Training",
        "",
        f"- init: {start}; feature projection at zero (so the draft starts as that token draft).",
        f"- loss: CE on the target's greedy token + {r['feature_weight']} x smooth-L1 to the target's "
        f"feature at each position; prompt positions weighted {r['prompt_weight']}; {r['passes']} passes "
        "per batch (true features, then the draft's own outputs as features).",
        f"- AdamW, lr {r['lr']}, {r['steps']} steps x batch {r['batch_size']}, seed {r['seed']}; "
        f"final loss {r['final_loss']:.3f}.",
        f"- time on this machine: target features {r['seconds_features']:.0f} s (cached in --work), "
        f"training {r['seconds_train']:.0f} s ({r['threads']} CPU threads).",
        "",
        "## Measured (held-out questions, greedy, exact replay of chain drafting)",
        "",
        f"- chain-of-{r['chain']} acceptance rate (accepted / drafted): **{after['acceptance_rate']:.3f}** "
        f"over {after['drafted']:,} drafted tokens (at init: {r['heldout_before']['acceptance_rate']:.3f})",
        f"- with the engine's prompt lookup: **{lookup['acceptance_rate']:.3f}**",
        f"- by prompt shape: {json.dumps({k: round(v, 3) for k, v in after['acceptance_by_shape'].items()})}",
        *card_cost_and_command(r),
    ]
    (out / "README.md").write_text("\n".join(lines))
