"""Token drafts: a small LM over tokens made from the target's first layers.

The draft is the target's config with fewer decoder layers, initialised from the
target's embedding, its first layers and its final norm; only the layers and the norm
are trained (the embedding and the tied head stay frozen, so they never need shipping).
Its LM head is restricted to a few thousand token ids (the ones the target uses most).
Loss: cross-entropy on the target's greedy token (its argmax, also along sampled answers)
plus a soft term toward the target's top-k distribution (restricted to the head).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from langchain_seed.engine.feature_draft import cut_config
from langchain_seed.engine.models import is_layers_draft_dir, load_layers_draft
from langchain_seed.training.fit import to_device
from langchain_seed.training.measure import (
    AcceptanceTally,
    alternating_costs,
    head_logits,
    step_ms,
    teacher_forced_acceptance,
)
from langchain_seed.training.targets import HEAD_IDS_FILE, Example, head_index

LAYERS_FILE = "draft_layers.safetensors"


def init_draft(target: Any, layers: int) -> Any:
    """A LlamaForCausalLM with the target's config, ``layers`` layers, target weights."""
    draft = AutoModelForCausalLM.from_config(cut_config(target.config, layers))
    source = target.state_dict()
    state = {name: source[name] for name in draft.state_dict() if name in source}
    missing, _ = draft.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing:
        raise ValueError(f"target has no weights for draft parameters {missing[:5]}")
    draft.tie_weights()
    return draft.float()


def load_init_draft(path: str | Path, target: Any) -> Any:
    """A trained token draft to start from, float32: a full model dir, or a layers-only one
    (the default pair's) built on a copy of `target`'s embedding (training never touches
    the target's own)."""
    if not is_layers_draft_dir(path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
    draft = load_layers_draft(path, target)
    embedding = torch.nn.Embedding.from_pretrained(target.get_input_embeddings().weight.detach().float().clone(),
                                                   freeze=False)
    draft.set_input_embeddings(embedding)
    draft.get_output_embeddings().weight = embedding.weight
    return draft.float()


def trainable_state(draft: Any) -> dict:
    """The draft's own weights: everything except the (target-derived) embedding/head."""
    return {name: tensor for name, tensor in draft.state_dict().items()
            if not name.endswith("embed_tokens.weight") and name != "lm_head.weight"}


def freeze_embedding(draft: Any) -> None:
    for name, param in draft.named_parameters():
        param.requires_grad = not (name.endswith("embed_tokens.weight") or name == "lm_head.weight")


def collate(batch: Sequence[Example], head_index: Any, prompt_weight: float) -> dict:
    """Right-padded tensors: ids, mask, next-token head targets, weights, soft targets."""
    width = max(len(e.ids) for e in batch)
    top_k = batch[0].topk_ids.shape[1]
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    weight = torch.zeros(len(batch), width)  # weight of the loss at position p (predicts p + 1)
    hard = torch.full((len(batch), width), -100, dtype=torch.long)
    soft_idx = torch.full((len(batch), width, top_k), -1, dtype=torch.long)
    soft_lp = torch.full((len(batch), width, top_k), float("-inf"))
    for row, e in enumerate(batch):
        n = len(e.ids)
        ids[row, :n] = e.ids
        mask[row, :n] = 1
        weight[row, : e.n_prompt - 1] = prompt_weight
        weight[row, e.n_prompt - 1 : n - 1] = 1.0
        hard[row, : n - 1] = head_index[e.ids[1:]]
        covered = e.topk_ids.shape[0]  # top-k covers the last `covered` positions (up to n - 2)
        # Where the top-k is known the target's argmax is the hard target, not the text: at prompt
        # positions, and after a sampled token (greedy answers: the answer's own next token).
        hard[row, n - 1 - covered : n - 1] = head_index[e.topk_ids[:, 0].long()]
        if covered < n - 1:
            weight[row, : n - 1 - covered] = 0.0
        soft_idx[row, n - 1 - covered : n - 1] = head_index[e.topk_ids.long()]
        soft_lp[row, n - 1 - covered : n - 1] = e.topk_logprobs.float()
    soft_lp = soft_lp.masked_fill(soft_idx < 0, float("-inf"))
    return {"ids": ids, "mask": mask, "weight": weight, "hard": hard,
            "soft_idx": soft_idx, "soft_lp": soft_lp}


def distill_loss(draft: Any, head_weight: Any, batch: dict, soft_weight: float) -> Any:
    """Weighted CE on the target's greedy token + soft CE toward its top-k (over the head)."""
    hidden = draft.model(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state
    keep = batch["weight"] > 0  # [batch, seq]
    logprobs = torch.log_softmax(head_logits(hidden[keep], head_weight), dim=-1)  # [n, head]
    weight = batch["weight"][keep]
    hard = batch["hard"][keep]
    hard_ok = hard >= 0
    ce = -logprobs.gather(1, hard.clamp(min=0)[:, None])[:, 0] * hard_ok
    soft_lp = batch["soft_lp"][keep]  # [n, top_k]
    has_soft = torch.isfinite(soft_lp).any(-1)
    target_probs = torch.softmax(soft_lp.masked_fill(~has_soft[:, None], 0.0), dim=-1)
    target_probs = target_probs * torch.isfinite(soft_lp)
    soft_ce = -(target_probs * logprobs.gather(1, batch["soft_idx"][keep].clamp(min=0))).sum(-1)
    per_token = ce + soft_weight * soft_ce * has_soft
    return (per_token * weight).sum() / weight.sum().clamp(min=1e-6)


def draft_predictions(draft: Any, head_ids: Any, head_weight: Any, example: Example) -> list[int]:
    """The draft's restricted-head argmax at every output position (teacher forced).

    head_ids: `[head]` on the draft's device; head_weight: `[head, H]`, its embedding rows.
    """
    with torch.no_grad():
        hidden = draft.model(input_ids=example.ids[None].to(draft.device)).last_hidden_state[0]  # [seq, H]
        positions = hidden[example.n_prompt - 1 : len(example.ids) - 1]
        best = head_logits(positions, head_weight).argmax(-1)
    return head_ids[best].tolist()


def heldout_acceptance(draft: Any, head_ids: Any, examples: Sequence[Example], chain: int = 4) -> dict:
    """Chain-of-``chain`` greedy acceptance and per-token agreement over held-out examples."""
    tally = AcceptanceTally()
    agree = total = 0
    head_ids = head_ids.to(draft.device)
    head_weight = draft.get_input_embeddings().weight[head_ids].detach()  # once, not per example
    for example in examples:
        target_tokens = example.ids[example.n_prompt :].tolist()
        if not target_tokens:
            continue
        predicted = draft_predictions(draft, head_ids, head_weight, example)
        tally.add(example.meta.get("shape", "?"), *teacher_forced_acceptance(predicted, target_tokens, chain))
        agree += sum(p == t for p, t in zip(predicted, target_tokens))
        total += len(target_tokens)
    return {**tally.summary(), "token_agreement": agree / max(1, total), "tokens": total,
            "acceptance_by_shape": tally.by_shape_rates()}


def token_costs(draft: Any, target: Any, head_ids: Any, repeats: int = 5) -> tuple[float, float]:
    """(draft ms, target ms) per cached single-token forward, as the engine runs them
    (`alternating_costs` of `step_ms` with the draft's restricted head)."""
    return alternating_costs(draft, target, lambda: step_ms(draft, head_ids), repeats)


def save_draft(draft: Any, head_ids: Sequence[int], out: Path, dtype: str = "float16") -> int:
    """Write config.json, the trained weights (``dtype``) and head ids; returns bytes."""
    out.mkdir(parents=True, exist_ok=True)
    draft.config.save_pretrained(out)
    state = {k: v.detach().to(getattr(torch, dtype)).contiguous() for k, v in trainable_state(draft).items()}
    save_file(state, str(out / LAYERS_FILE), metadata={"format": "pt", "dtype": dtype})
    (out / LAYERS_FILE).chmod(0o644)
    (out / HEAD_IDS_FILE).write_text(json.dumps([int(i) for i in head_ids]))
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


class TokenDraft:
    """The token draft's part of `distill` (stages 4-7): init, loss, measures, saving."""

    kind = "token"
    desc = "distill"

    def __init__(self, args: Any, target: Any, head_list: list[int], train: Sequence[Example],
                 heldout: Sequence[Example]) -> None:
        self.args, self.target, self.head_list = args, target, head_list
        self.train, self.heldout = train, heldout
        self.head_ids = torch.tensor(head_list)
        self.head_index = head_index(head_list, target.config.vocab_size)
        self.head_weight: Any = None

    def prepare(self) -> dict:
        """Nothing beyond the target's outputs."""
        return {}

    def initial_draft(self, device: Any) -> Any:
        args = self.args
        if args.init_draft:
            draft = load_init_draft(args.init_draft, self.target)
        else:
            draft = init_draft(self.target, args.layers)
        draft = draft.to(device)
        self.head_weight = draft.get_input_embeddings().weight[self.head_ids.to(device)].detach()
        return draft

    def acceptance(self, draft: Any) -> dict:
        return heldout_acceptance(draft, self.head_ids, self.heldout, self.args.chain)

    def batch_loss(self, draft: Any) -> Callable[[Sequence[int]], torch.Tensor]:
        """The loss of a batch of training examples (freezes the embedding first)."""
        freeze_embedding(draft)
        args = self.args
        return lambda picked: distill_loss(draft, self.head_weight, to_device(
            collate([self.train[i] for i in picked], self.head_index, args.prompt_weight),
            self.head_weight.device), args.soft_weight)

    own_state = staticmethod(trainable_state)

    def extra_measures(self, draft: Any) -> dict:
        return {}

    def draft_step_ms(self, draft: Any) -> Callable[[], float]:
        return lambda: step_ms(draft, self.head_ids)

    def report_fields(self, draft: Any) -> dict:
        return {"params_total": sum(p.numel() for p in draft.parameters()),
                "top_k": self.args.top_k, "soft_weight": self.args.soft_weight}

    def save(self, draft: Any, out: Path) -> int:
        return save_draft(draft, self.head_list, out, self.args.dtype)
