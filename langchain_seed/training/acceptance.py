"""Acceptance per prompt family, measured by running the engine itself.

Every prompt is decoded by `SeedEngine` in scheduled mode with a draft chain (a fixed
length: `draft_confidence` and `draft_survival` 0, so every round drafts the whole chain), greedily and sampled;
acceptance is the engine's own count, accepted / drafted, under its own rules: greedy
verification at temperature 0, speculative sampling (MCSD with a tree `k_config`) above it.
Each request samples from its own seeded generator, so a measurement repeats exactly.

The greedy run's outputs are the target's own greedy continuations: they also give the
share of the target's next tokens that fall outside the draft's restricted head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.training.mix import MixPrompt, render

SETTINGS: dict[str, float] = {"greedy": 0.0, "t0.7": 0.7, "t1.0": 1.0}
"""The decodings measured by default: name -> temperature."""


def settings_for(temperatures: Sequence[float]) -> dict[str, float]:
    """Greedy, and each temperature as ``t<temperature>`` (e.g. ``t0.7``)."""
    return {"greedy": 0.0, **{f"t{t:.1f}": float(t) for t in temperatures if t > 0}}


def _setting_order(name: str) -> float:
    return 0.0 if name == "greedy" else float(name[1:])


def encode_prompts(prompts: Sequence[MixPrompt], tokenizer: Any) -> list[list[int]]:
    """Each prompt's token ids as the target reads it (`mix.render`, no special tokens added)."""
    return [list(tokenizer(render(p, tokenizer), add_special_tokens=False).input_ids) for p in prompts]


class FamilyTally:
    """Accepted / drafted tokens per (family, setting), and the greedy outputs' head coverage."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, list[int]]] = {}
        self.outside: dict[str, list[int]] = {}

    def add(self, family: str, setting: str, accepted: int, drafted: int) -> None:
        pair = self.counts.setdefault(family, {}).setdefault(setting, [0, 0])
        pair[0] += accepted
        pair[1] += drafted

    def add_outputs(self, family: str, tokens: Sequence[int], head: set[int]) -> None:
        pair = self.outside.setdefault(family, [0, 0])
        pair[0] += sum(t not in head for t in tokens)
        pair[1] += len(tokens)

    def table(self) -> dict:
        """``families``: per family, per setting, the rate and its counts; ``mean``: the mean of the
        family rates per setting; ``pooled``: all families' tokens together; ``outside_head``:
        per family, the share of the target's greedy tokens outside the draft's head."""
        families: dict[str, dict[str, dict[str, Any]]] = {
            family: {setting: {"acceptance": round(a / d, 4) if d else None, "accepted": a, "drafted": d}
                     for setting, (a, d) in sorted(settings.items())}
            for family, settings in sorted(self.counts.items())}
        mean: dict[str, float | None] = {}
        pooled: dict[str, float | None] = {}
        for setting in sorted({s for per in self.counts.values() for s in per}):
            cells = [per[setting] for per in families.values() if setting in per]
            rates = [float(c["acceptance"]) for c in cells if c["acceptance"] is not None]
            mean[setting] = round(sum(rates) / len(rates), 4) if rates else None
            accepted, drafted = sum(int(c["accepted"]) for c in cells), sum(int(c["drafted"]) for c in cells)
            pooled[setting] = round(accepted / drafted, 4) if drafted else None
        outside = {family: {"outside_head": round(o / n, 4) if n else None, "tokens": n}
                   for family, (o, n) in sorted(self.outside.items())}
        return {"families": families, "mean": mean, "pooled": pooled, "outside_head": outside}


def measure(target: Any, draft: Any, tokenizer: Any, head_ids: Sequence[int] | None,
            prompts: Sequence[MixPrompt], max_tokens: int, chain: int = 4,
            settings: dict[str, float] | None = None, seed: int = 0, tally: FamilyTally | None = None,
            k_config: tuple[int, ...] | None = None) -> tuple[FamilyTally, list[list[int]]]:
    """Decode ``prompts`` once per setting on a fresh engine; add the counts to ``tally``.

    Returns the tally and the greedy outputs (token ids, one list per prompt; empty lists
    where no greedy setting ran). ``k_config`` (a tree) replaces the chain of ``chain``.
    """
    tally = tally if tally is not None else FamilyTally()
    settings = SETTINGS if settings is None else settings
    prompt_ids = encode_prompts(prompts, tokenizer)
    config = SpeculativeConfig(k_config=k_config or (1,) * chain, draft_confidence=0.0, draft_survival=0.0,
                               prompt_lookup=0)
    engine = SeedEngine(target, draft, tokenizer, config, draft_head_token_ids=head_ids)
    head = set(head_ids) if head_ids is not None else None
    greedy_outputs: list[list[int]] = [[] for _ in prompts]
    try:
        for setting, temperature in settings.items():
            params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed + i)
                      for i in range(len(prompts))]
            results = engine.generate(prompt_ids, params, mode="scheduled")
            for i, (prompt, result) in enumerate(zip(prompts, results)):
                if result.error is not None:
                    raise RuntimeError(f"{prompt.family} prompt {i} failed in the engine: {result.error}")
                tally.add(prompt.family, setting, result.stats.accepted, result.stats.drafted)
                if temperature == 0:
                    greedy_outputs[i] = list(result.token_ids)
                    if head is not None:
                        tally.add_outputs(prompt.family, result.token_ids, head)
    finally:
        engine.close()
        target.eval()
        draft.eval()
    return tally, greedy_outputs


def format_table(table: dict) -> str:
    """A Markdown table: one row per family, one column per setting, and the head coverage."""
    settings = sorted({s for per in table["families"].values() for s in per}, key=_setting_order)
    lines = ["| family | " + " | ".join(settings) + " | outside head |",
             "|---|" + "---|" * (len(settings) + 1)]
    for family, per in table["families"].items():
        cells = [f"{per[s]['acceptance']:.3f}" if s in per and per[s]["acceptance"] is not None else "-"
                 for s in settings]
        outside = table["outside_head"].get(family, {}).get("outside_head")
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {'-' if outside is None else f'{outside:.3f}'} |")
    for name in ("mean", "pooled"):
        cells = [f"{table[name][s]:.3f}" if table[name].get(s) is not None else "-" for s in settings]
        lines.append(f"| **{name}** | " + " | ".join(cells) + " | |")
    return "\n".join(lines)
