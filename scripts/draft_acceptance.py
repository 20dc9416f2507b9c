"""Held-out greedy chain-of-4 acceptance of the default draft, with and without prompt lookup,
and its per-token cost against the target's.

Teacher-forced exact replay on the target's own greedy continuations of the held-out
prompts, which `scripts/make_default_draft.sh` caches in its work directory:

    .venv/bin/python scripts/draft_acceptance.py WORK_DIR/heldout-*.pt [DRAFT_ASSET_DIR]

DRAFT_ASSET_DIR: a draft as `langchain-seed distill --out` writes it (its own layers and
head ids), assembled with the target's embedding; by default the shipped draft.

A greedy round starting at position j accepts the longest run of positions where the
drafted token equals the target's; the draft at a position is the prompt-lookup token
(the engine's `NGramIndex`, n from 4 down to 3) when there is one, else the draft model's
argmax over its restricted head. Three rules: the model alone, lookup wherever it finds a
token, and the engine's default (`SpeculativeConfig.prompt_lookup_below`): lookup only
where the model's top probability is below that threshold. Each rule's acceptance is
counted two ways (`replay`): strictly, 4 drafted tokens in every round even where fewer
are left before the sequence's end, and as `distill` counts it, only up to the end. The cost
is `training.token.token_costs`: one cached single-token forward of each model on the engine's
kernels, medians of 5 alternating runs.
"""

import json
import sys
from pathlib import Path

import torch

from langchain_seed.engine import SpeculativeConfig
from langchain_seed.engine.drafters import NGramIndex
from langchain_seed.engine.models import load_draft, load_model
from langchain_seed.pair.assemble import ensure_default_draft, ensure_default_pair
from langchain_seed.training.measure import teacher_forced_acceptance
from langchain_seed.training.targets import load_examples
from langchain_seed.training.token import token_costs


def model_predictions(draft, head_ids, examples):
    """Per example: the model's argmax token and its top probability at every position."""
    weight = draft.get_output_embeddings().weight[head_ids]
    predictions = []
    with torch.inference_mode():
        for e in examples:
            probs = torch.softmax(draft.get_decoder()(input_ids=e.ids[None]).last_hidden_state[0] @ weight.T, -1)
            top, best = probs.max(-1)
            predictions.append((head_ids[best].tolist(), top.tolist()))
    return predictions


def replay(examples, predictions, lookup_min_n, lookup_below=1.0, depth=4):
    """Acceptance counted two ways: `acceptance_rate` counts `depth` drafted tokens in every
    round, also in a sequence's last rounds, where fewer tokens are left to match (the
    strict count all published figures use); `acceptance_rate_to_end` is
    `training.measure.teacher_forced_acceptance`'s count, which drafts only up to the sequence's end
    (min(depth, tokens left)), as `distill`'s own report and the model card count."""
    accepted = drafted = drafted_to_end = agree = total = 0
    for example, (predicted, top) in zip(examples, predictions):
        ids = example.ids.tolist()
        index = NGramIndex()
        chosen = []
        for position in range(example.n_prompt, len(ids)):
            index.update(ids[:position])
            unsure = lookup_below >= 1.0 or top[position - 1] < lookup_below
            token = index.lookup(ids[max(0, position - 4):position], lookup_min_n) if lookup_min_n and unsure else None
            chosen.append(token if token is not None else predicted[position - 1])
        target = ids[example.n_prompt :]
        ok = [c == t for c, t in zip(chosen, target)]
        agree, total = agree + sum(ok), total + len(ok)
        a, d = teacher_forced_acceptance(chosen, target, depth, count_past_end=True)
        _, d_to_end = teacher_forced_acceptance(chosen, target, depth)  # the same rounds, fewer counted
        accepted, drafted, drafted_to_end = accepted + a, drafted + d, drafted_to_end + d_to_end
    return {"acceptance_rate": round(accepted / drafted, 3),
            "acceptance_rate_to_end": round(accepted / drafted_to_end, 3),
            "token_agreement": round(agree / total, 3)}


def main(path: str, asset_dir: str | None = None) -> None:
    target_dir, draft_dir = ensure_default_pair(progress=False)
    if asset_dir is not None:
        draft_dir = ensure_default_draft(target_dir, progress=False, asset_dir=asset_dir)
    target = load_model(target_dir, weights="float32")  # the GGUF's dequantised weights
    draft = load_draft(draft_dir, target)
    head_ids = torch.tensor(json.loads((Path(draft_dir) / "head_token_ids.json").read_text()))
    examples = load_examples(Path(path))
    below = SpeculativeConfig().prompt_lookup_below
    predictions = model_predictions(draft, head_ids, examples)
    draft_ms, target_ms = token_costs(draft, target, head_ids)
    print(json.dumps({"prompts": len(examples), "draft_model": replay(examples, predictions, 0),
                      "draft_model+prompt_lookup": replay(examples, predictions, 3),
                      f"draft_model+prompt_lookup_below_{below}": replay(examples, predictions, 3, below),
                      "draft_ms": round(draft_ms, 2), "target_ms": round(target_ms, 2),
                      "cost_ratio": round(draft_ms / target_ms, 3)}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
