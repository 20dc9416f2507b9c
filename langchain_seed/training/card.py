"""The model card (README.md beside a draft's weights), written from `distill`'s report."""

from __future__ import annotations

import json
from pathlib import Path

from langchain_seed.training.targets import HEAD_IDS_FILE
from langchain_seed.training.token import LAYERS_FILE


def write_model_card(out: Path, report: dict) -> None:
    """Write ``out/README.md`` for the report's draft (token or feature kind)."""
    r = report
    feature = r.get("kind") == "feature"
    lines = [
        f"# {r['name']}",
        "",
        *(_feature_intro(r) if feature else _token_intro(r)),
        "",
        "## Size",
        "",
        *(_feature_size(r) if feature else _token_size(r)),
        "",
        "## Training data",
        "",
        f"- GSM8K test split (Cobbe et al. 2021, MIT licence), file `{r['data']}` ({r['n_questions']} questions).",
        f"- held out, never trained on: questions {r['heldout_range']} (the first {r['heldout']} lines).",
        *(_feature_data(r) if feature else _token_data(r)),
        "",
        "## Training",
        "",
        *(_feature_training(r) if feature else _token_training(r)),
        "",
        *(_feature_measured(r) if feature else _token_measured(r)),
        _acceptance_by_shape(r),
        *_cost_and_command(r, "" if feature else " (restricted head)"),
    ]
    (out / "README.md").write_text("\n".join(lines))


def _token_intro(r: dict) -> list[str]:
    return [
        f"A {r['layers']}-layer draft model for speculative decoding with `{r['target_name']}` "
        "(the target): same tokenizer, same hidden size, the target's embedding (not shipped: it "
        "is taken from the target when the draft is assembled), its LM head restricted to "
        f"{r['head_size']} token ids (`{HEAD_IDS_FILE}`).",
    ]


def _feature_intro(r: dict) -> list[str]:
    return [
        f"A feature draft (EAGLE-style, `langchain_seed.engine.FeatureDraftModel`) for `{r['target_name']}`: "
        f"{r['layers']} decoder layers of the target's architecture whose input at each position is the "
        "token's embedding plus a learned projection of the target's last hidden state at the position "
        f"before. The target's embedding and its LM head restricted to {r['head_size']} token ids "
        "(`head_token_ids.json`) are taken from the target when the draft is assembled, not shipped.",
    ]


def _token_size(r: dict) -> list[str]:
    return [
        f"- parameters: {r['params_total']:,} in the assembled model, of which {r['params_own']:,} "
        f"are the draft's own (trained {r['layers']} decoder layers + final norm)",
        f"- shipped: {r['shipped_bytes'] / 1e6:.1f} MB (`{LAYERS_FILE}` in {r['dtype']}, config, head ids, this card)",
    ]


def _feature_size(r: dict) -> list[str]:
    return [
        f"- own parameters: {r['params_own']:,} (decoder layers, final norm, feature projection)",
        f"- shipped: {r['shipped_bytes'] / 1e6:.1f} MB (`feature_draft.safetensors` in {r['dtype']}, "
        "config, head ids, this card)",
    ]


def _token_data(r: dict) -> list[str]:
    return [
        f"- trained on questions {r['train_range']}: {r['n_train_sequences']} prompts, "
        f"{r['train_output_tokens']:,} target output tokens, {r['train_prompt_tokens']:,} prompt tokens.",
        "- prompts: Tree-of-Thoughts GSM8K shapes (propose / sample / value / answer), at the root "
        "or after 1-2 steps of the reference solution (calculator annotations removed); "
        f"{r['chat_fraction']:.0%} wrapped in the chat template. Shape counts: {r['shape_counts']}.",
        f"- targets: the target's own greedy continuations (batched, left padding, up to "
        f"{r['train_max_new_tokens']} new tokens; {r['max_new_tokens']} for the held-out set) and "
        f"its top-{r['top_k']} distribution at "
        + ("every position." if r["prompt_weight"] > 0 else "every output position."),
    ]


def _feature_data(r: dict) -> list[str]:
    return [
        f"- trained on questions {r['train_range']}: {r['n_train_sequences']} Tree-of-Thoughts prompts "
        f"(shapes {r['shape_counts']}), {r['train_output_tokens']:,} target output tokens, "
        f"{r['train_prompt_tokens']:,} prompt tokens; the target's greedy continuations (up to "
        f"{r['train_max_new_tokens']} new tokens) and its features and greedy choices at every position.",
    ]


def _token_training(r: dict) -> list[str]:
    return [
        (f"- init: the trained draft `{r['init_draft']}` (its layers, norm and head ids); "
         "embedding/head frozen." if r.get("init_draft") else
         f"- init: target embedding, first {r['layers']} layers and final norm; embedding/head frozen."),
        f"- loss: CE on the target's greedy token + {r['soft_weight']} x soft CE to its top-{r['top_k']} "
        f"distribution over the head; prompt positions weighted {r['prompt_weight']}.",
        _optimizer(r),
        f"- time on {_where(r)}: target outputs {r['seconds_generate']:.0f} s "
        "(outputs found in the --work cache are not regenerated), training "
        f"{r['seconds_train']:.0f} s.",
    ]


def _feature_training(r: dict) -> list[str]:
    start = f"the trained token draft `{r['init_draft']}`" if r["init_draft"] else "the target's first layers"
    return [
        f"- init: {start}; feature projection at zero (so the draft starts as that token draft).",
        f"- loss: CE on the target's greedy token + {r['feature_weight']} x smooth-L1 to the target's "
        f"feature at each position; prompt positions weighted {r['prompt_weight']}; {r['passes']} passes "
        "per batch (true features, then the draft's own outputs as features).",
        _optimizer(r),
        f"- time on this machine: target features {r['seconds_features']:.0f} s (cached in --work), "
        f"training {r['seconds_train']:.0f} s ({r['threads']} CPU threads).",
    ]


def _optimizer(r: dict) -> str:
    return (f"- AdamW, lr {r['lr']}, {r['steps']} steps x batch {r['batch_size']}, seed {r['seed']}; "
            f"final loss {r['final_loss']:.3f}.")


def _token_measured(r: dict) -> list[str]:
    acc = r["heldout_after"]
    return [
        "## Measured (held-out questions, greedy, teacher-forced exact replay)",
        "",
        f"- chain-of-{r['chain']} acceptance rate (accepted / drafted): **{acc['acceptance_rate']:.3f}** "
        f"over {acc['drafted']:,} drafted tokens (before training: {r['heldout_before']['acceptance_rate']:.3f})",
        f"- per-token agreement with the target: {acc['token_agreement']:.3f} over {acc['tokens']:,} tokens",
    ]


def _feature_measured(r: dict) -> list[str]:
    after, lookup = r["heldout_after"], r["heldout_with_lookup"]
    return [
        "## Measured (held-out questions, greedy, exact replay of chain drafting)",
        "",
        f"- chain-of-{r['chain']} acceptance rate (accepted / drafted): **{after['acceptance_rate']:.3f}** "
        f"over {after['drafted']:,} drafted tokens (at init: {r['heldout_before']['acceptance_rate']:.3f})",
        f"- with the engine's prompt lookup: **{lookup['acceptance_rate']:.3f}**",
    ]


def _acceptance_by_shape(r: dict) -> str:
    by_shape = r["heldout_after"]["acceptance_by_shape"]
    return f"- by prompt shape: {json.dumps({k: round(v, 3) for k, v in by_shape.items()})}"


def _where(r: dict) -> str:
    """Where a report's generation and training ran, for the card."""
    if r.get("device", "cpu") == "cpu":
        return f"the CPU ({r['threads']} threads)"
    return f"{r['device']} ({r.get('device_name', '?')})"


def _cost_and_command(r: dict, draft_note: str = "") -> list[str]:
    """A model card's per-token cost line and its Command section."""
    return [
        f"- per-token cost, one cached forward, fp32 on the engine's kernels, {r['threads']} CPU threads, "
        f"medians of 5 alternating runs: draft {r['draft_ms']:.1f} ms{draft_note} vs target {r['target_ms']:.1f} ms "
        f"= **{r['draft_ms'] / r['target_ms']:.3f}** of the target.",
        "", "## Command", "", "```", r["command"], "```", "",
    ]


# ------------------------------------------------------------ broad mix and own prompts


def write_family_card(out: Path, report: dict) -> None:
    """Write ``out/README.md`` for a draft made by `distill --mix` or `distill --prompts`."""
    r = report
    source = (f"the prompts of `{r['prompts_file']}` (`--prompts`)" if r["mode"] == "prompts"
              else "the broad prompt mix (`--mix`, `langchain_seed.training.mix`)")
    start = (f"continued from the draft `{r['init_draft']}` (its layers, norm and head ids)" if r["init_draft"]
             else f"from the target's embedding, first {r['layers']} layers and final norm")
    lines = [
        f"# {r['name']}", "",
        f"A {r['layers']}-layer token draft for speculative decoding with `{r['target_name']}`, trained on "
        f"the target's own answers to {source}, {start}. Its LM head is restricted to {r['head_size']} "
        f"token ids (`{HEAD_IDS_FILE}`); the embedding is the target's (not shipped).", "",
        "Use it: `SeedLLM.from_default(draft=\"DIR\")` (the default target), or "
        "`langchain-seed distill --prompts MORE.jsonl --init-draft DIR` to continue it.", "",
        "## Training data", "",
        f"- training prompts per family: {r['train_prompts']} ({r['train_sequences']} answers: greedy, plus "
        f"{r['samples']} sampled at each temperature {r['sample_temperatures']}; "
        f"{r['train_output_tokens']:,} answer tokens, up to {r['max_new_tokens']} each).",
        f"- held out per family, never trained on: {r['heldout_prompts']}.",
        f"- targets: the target's answers and its top-{r['top_k']} distribution at every answer position.", "",
        "## Training", "",
        f"- loss: CE on the target's argmax + {r['soft_weight']} x soft CE to its top-{r['top_k']} distribution "
        f"over the head; prompt positions weighted 0; embedding/head frozen.",
        f"- AdamW, lr {r['lr']}, {r['steps']} steps x batch {r['batch_size']}, seed {r['seed']}; final loss "
        f"{r['final_loss']:.3f}; on {_where(r)}: target answers {r['seconds_generate']:.0f} s, training "
        f"{r['seconds_train']:.0f} s (answers and checkpoints kept in the work dir: a rerun resumes).", "",
        *_family_table(r), "",
        "## Head coverage", "",
        "Share of the target's answer tokens (training set) outside the draft's head, per family: "
        f"{json.dumps(r['head']['outside_head'])}; outside the N most frequent answer tokens, by N: "
        f"{json.dumps(r['head']['outside_top_n_by_size'])} ({r['head']['distinct_tokens']:,} distinct tokens).",
        "", "## Cost", "",
        *_cost_and_command(r, " (restricted head)"),
    ]
    (out / "README.md").write_text("\n".join(lines))


def _family_table(r: dict) -> list[str]:
    """Held-out acceptance per family before and after training, each setting a column."""
    before, after = r.get("before"), r.get("after")
    if not after:
        return ["## Measured", "", "No held-out prompts (a family needs two or more prompts to hold one out)."]
    settings = sorted({s for per in after["families"].values() for s in per},
                      key=lambda name: 0.0 if name == "greedy" else float(name[1:]))
    header = " | ".join(f"{s} before | {s} after" for s in settings)
    lines = [f"## Measured (held-out prompts, the engine: chain of {r['chain']}, {r['measure_tokens']} new tokens)",
             "", "Acceptance (accepted / drafted) per family, greedy and sampled (speculative sampling):", "",
             f"| family | {header} | outside head |", "|---|" + "---|---|" * len(settings) + "---|"]

    def rate(table: dict | None, family: str, setting: str) -> str:
        value = (table or {}).get("families", {}).get(family, {}).get(setting, {}).get("acceptance")
        return "-" if value is None else f"{value:.3f}"

    for family in after["families"]:
        cells = " | ".join(f"{rate(before, family, s)} | {rate(after, family, s)}" for s in settings)
        outside = after["outside_head"].get(family, {}).get("outside_head")
        lines.append(f"| {family} | {cells} | {'-' if outside is None else f'{outside:.3f}'} |")
    def mean(table: dict | None, setting: str) -> str:
        value = (table or {}).get("mean", {}).get(setting)
        return "-" if value is None else f"{value:.3f}"

    means = " | ".join(f"{mean(before, s)} | {mean(after, s)}" for s in settings)
    lines.append(f"| **mean of families** | {means} | |")
    return lines
