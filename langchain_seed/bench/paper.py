"""The SeeD paper's comparison on its three datasets, on whole trees (`bench --paper`).

SeeD (Wang et al., COLING 2025, "Accelerating Reasoning Tree Construction via Scheduled
Speculative Decoding") times tree construction on GSM8K, Creative Writing and
Blocksworld, comparing autoregressive decoding (AR), speculative decoding (SD),
multi-candidate speculative decoding (MCSD) and SeeD. Here, per dataset, a whole
`TreeOfThoughts` search (``tot-full`` in the dataset's setup, `workloads.TASK_SETUPS`)
runs once per method, interleaved as every benchmark here is (`protocol.run_tot_full`):

- ``AR``: transformers `generate`, one sequence at a time (``hf_ar_serial``);
- ``SD``: our engine's speculative decoding, one sequence at a time, a chain draft
  (``seed_sd_serial`` with a chain as long as the pair's draft tree is deep);
- ``MCSD``: the same with the tree draft ``(2, 2, 1)`` and MCSD acceptance (greedy
  verification of the tree at temperature 0) (``mcsd_serial``);
- ``SeeD``: the scheduled engine with the paper's rounds policy (``seed_rounds``);
- ``ours``: the scheduled engine, batched verification (``seed_batched``);

plus transformers' batched `generate` and assisted generation. The document holds, per
dataset, the rows of `report.build_rows` (seconds, tokens/s, speedup over AR,
acceptance, target calls, peak memory, identical) and whether the issue's goals are met.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_seed.bench import protocol, report, workloads
from langchain_seed.bench.methods import BenchModels, Method, SeedMethod, make_method

PAPER_TASKS = ("gsm8k", "writing", "blocksworld")
PAPER_LABELS = {
    "hf_ar_serial": "AR",
    "seed_sd_serial": "SD",
    "mcsd_serial": "MCSD",
    "seed_rounds": "SeeD",
    "seed_batched": "ours",
    "hf_ar_batched": "HF batched",
    "hf_assisted_serial": "HF assisted",
}
"""Method -> its name in the paper's table, in table order."""
PAPER_METHODS = tuple(PAPER_LABELS)
MCSD_TREE = (2, 2, 1)
GOALS = (
    ("seed_rounds", "hf_ar_serial", 1.5),
    ("seed_batched", "hf_ar_serial", 3.0),
    ("seed_batched", "hf_ar_batched", 1.2),
)
"""(method, baseline, least speedup) per dataset, greedy; and every output identical."""


def chain_of(k_config: Sequence[int]) -> tuple[int, ...]:
    """A chain draft as deep as ``k_config``."""
    return (1,) * max(len(k_config), 1)


def make_paper_method(name: str, models: BenchModels) -> Method:
    """One method of `PAPER_METHODS`: SD and MCSD are speculative one at a time, with a chain
    and with `MCSD_TREE`; the others are the harness's methods of the same name."""
    if name == "seed_sd_serial":
        return SeedMethod(name, dataclasses.replace(models, k_config=chain_of(models.k_config)),
                          "speculative", "rounds")
    if name == "mcsd_serial":
        return SeedMethod(name, dataclasses.replace(models, k_config=MCSD_TREE), "speculative", "rounds")
    return make_method(name, models)


def run_paper(models: BenchModels, questions: int = 1, reps: int = 1, *, tasks: Sequence[str] = PAPER_TASKS,
              methods: Sequence[str] = PAPER_METHODS, temperature: float = 0.0, warmup: bool = True,
              progress: bool = True, data: str | Path | None = None,
              max_tokens: dict[str, int] | None = None) -> dict[str, Any]:
    """Run the table: per task, ``questions`` whole trees per method, ``reps`` timed repetitions.

    Returns ``{"temperature", "methods", "datasets": {task: {"settings", "rows"}}, "goals"}``
    (`report`'s rows, each with its ``label``). ``max_tokens`` overrides a task's setup.
    """
    built = [make_paper_method(name, models) for name in methods]
    datasets: dict[str, Any] = {}
    try:
        for task in tasks:
            texts = workloads.load_task_questions(task, questions, data)
            workload = workloads.build_tot_full(texts, (max_tokens or {}).get(task), task, temperature)
            run = protocol.run_tot_full(workload, built, models, reps, warmup, progress)
            rows = [{"label": PAPER_LABELS.get(row["method"], row["method"]), **row} for row in report.build_rows(run)]
            datasets[task] = {"settings": {**run.settings, "reps": reps}, "rows": rows}
    finally:
        for method in built:
            method.close()
    document = {"temperature": temperature, "methods": list(methods), "mcsd_tree": list(MCSD_TREE),
                "sd_chain": list(chain_of(models.k_config)), "datasets": datasets}
    document["goals"] = check_goals(document)
    return document


def check_goals(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, each goal of `GOALS` and identity, with the measured ratio; the goals are
    greedy ones, so a sampled run has none."""
    results: dict[str, list[dict[str, Any]]] = {}
    if document["temperature"]:
        return results
    for task, dataset in document["datasets"].items():
        seconds = {row["method"]: row["seconds"] for row in dataset["rows"]}
        checks = []
        for method, baseline, least in GOALS:
            if method in seconds and baseline in seconds and seconds[method]:
                ratio = seconds[baseline] / seconds[method]
                checks.append({"goal": f"{method} >= {least}x {baseline}", "measured": round(ratio, 2),
                               "met": ratio >= least})
        different = [row["method"] for row in dataset["rows"] if row["identical_to_target"] is False]
        checks.append({"goal": "every output identical to the target's", "measured": different or "all",
                       "met": not different})
        results[task] = checks
    return results


# ---------------------------------------------------------------------------------- output


TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("label", "method", "{}"),
    ("method", "harness name", "`{}`"),
    ("seconds", "s", "{:.2f}"),
    ("tokens_per_s", "tok/s", "{:.1f}"),
    ("speedup_vs_hf_ar_serial", "x AR", "{:.2f}"),
    ("speedup_vs_hf_ar_batched", "x HF batched", "{:.2f}"),
    ("acceptance_rate", "accept", "{:.2f}"),
    ("target_calls", "target calls", "{:.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("identical_to_target", "identical", "{}"),
)


def markdown_table(document: dict[str, Any]) -> str:
    """One Markdown table per dataset, then the goals."""
    lines: list[str] = []
    for task, dataset in document["datasets"].items():
        settings = dataset["settings"]
        lines += [f"### {task}", "",
                  f"{settings['questions']} question(s), breadth {settings['breadth']}, depth {settings['depth']}, "
                  f"{settings['evaluator']} evaluator, up to {settings['max_tokens']} tokens a call, "
                  f"{settings['reps']} rep(s), temperature {document['temperature']}", "",
                  "| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
                  "|" + "---|" * len(TABLE_COLUMNS)]
        for row in dataset["rows"]:
            cells = (report.format_cell(row.get(key), fmt) for key, _, fmt in TABLE_COLUMNS)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Goals:", ""]
    for task, checks in document.get("goals", {}).items():
        for check in checks:
            lines.append(f"- {task}: {check['goal']}: {check['measured']} ({'met' if check['met'] else 'missed'})")
    return "\n".join(lines) + "\n"


def write_markdown(document: dict[str, Any], path: str | Path, preamble: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(preamble + markdown_table(document), encoding="utf-8")
    return path


def write_plot(document: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Grouped bars: per dataset, each method's speedup over AR (hatched: not identical)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(document["datasets"])
    methods = [m for m in PAPER_METHODS if any(row["method"] == m for d in document["datasets"].values()
                                               for row in d["rows"])]
    width = 0.8 / max(len(methods), 1)
    tallest = 1.0
    figure, axis = plt.subplots(figsize=(max(8, 2.6 * len(tasks)), 4.5))
    for index, method in enumerate(methods):
        rows = [_row(document, task, method) for task in tasks]
        speedups = [row["speedup_vs_hf_ar_serial"] or 0.0 if row else 0.0 for row in rows]
        tallest = max(tallest, *speedups)
        positions = [t + (index - (len(methods) - 1) / 2) * width for t in range(len(tasks))]
        bars = axis.bar(positions, speedups, width, label=PAPER_LABELS[method],
                        hatch=["//" if row and row["identical_to_target"] is False else "" for row in rows])
        axis.bar_label(bars, fmt="%.2f", fontsize=7)
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_ylim(0, 1.3 * tallest)  # room for the legend
    axis.set_xticks(range(len(tasks)), tasks)
    axis.set_ylabel("speedup over AR (transformers serial)")
    axis.legend(fontsize=8, ncol=min(len(methods), 4), loc="upper left")
    axis.set_title(title or "whole trees per dataset (hatched: output not identical)")
    return report.save_figure(figure, path)


def _row(document: dict[str, Any], task: str, method: str) -> dict[str, Any] | None:
    return next((row for row in document["datasets"][task]["rows"] if row["method"] == method), None)


def format_text(document: dict[str, Any], table: Callable[[list[dict[str, Any]]], str] = report.format_table) -> str:
    """The terminal form: per dataset the harness's table, then the goals."""
    parts = []
    for task, dataset in document["datasets"].items():
        parts.append(f"{task}: {dataset['settings']}\n{table(dataset['rows'])}")
    goals = [f"  {task}: {c['goal']}: {c['measured']} ({'met' if c['met'] else 'missed'})"
             for task, checks in document.get("goals", {}).items() for c in checks]
    return "\n\n".join(parts) + ("\ngoals:\n" + "\n".join(goals) if goals else "")
