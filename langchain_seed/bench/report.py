"""Turn a `BenchRun` into rows, a terminal table, a JSON document and a plot.

Row fields (medians over repetitions unless said otherwise):

- ``seconds``: wall time for the whole workload; ``seconds_reps``: every repetition's.
- ``new_tokens``: tokens generated (cut after the first EOS); ``tokens_per_s``.
- ``target_calls`` / ``draft_calls``: model forwards (hook counts).
- ``acceptance_rate``: accepted / drafted over all repetitions (None: no draft). For
  ``hf_assisted_serial`` it is estimated from forward counts (see the harness).
- ``peak_rss_mb``: the process's peak resident memory during the method's calls (the
  models included); ``rss_delta_mb``: the most it grew within one call (what decoding
  itself allocated); ``peak_gpu_mb`` on CUDA.
- ``identical_to_target``: every output of every repetition equal, token for token up
  to the first EOS, to the target's greedy output.
- ``prompts_identical`` / ``prompts_compared``: of the first repetition's prompts, how
  many outputs equal the target's (the table's ``same``); ``first_divergence``: per
  prompt, None or the index of the first new token that differs (llama.cpp, which
  quantises activations, differs slightly). None for ``tot-full``.
- ``speedup_vs_hf_ar_serial`` / ``speedup_vs_hf_ar_batched``: the baseline's median
  seconds over this method's (None when the baseline did not run).
- ``all_accepted_bound_s``: seed methods only; the time the run would take if every
  drafted token were accepted: each call's seconds times (verifications needed at
  depth + 1 tokens each) / (verifications made), summed (see `SeedMethod.run_group` for
  the unit). Prefill is scaled with the rest, so the bound is slightly optimistic.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from langchain_seed.bench.records import BenchRun, MethodRecord
from langchain_seed.engine.calibration import cpu_model_name, cpu_vector_extensions

COLUMNS = (
    ("method", "method", "{}"),
    ("seconds", "s", "{:.2f}"),
    ("new_tokens", "tokens", "{:.0f}"),
    ("tokens_per_s", "tok/s", "{:.1f}"),
    ("speedup_vs_hf_ar_serial", "x serial", "{:.2f}"),
    ("speedup_vs_hf_ar_batched", "x batched", "{:.2f}"),
    ("target_calls", "target", "{:.0f}"),
    ("draft_calls", "draft", "{:.0f}"),
    ("acceptance_rate", "accept", "{:.2f}"),
    ("all_accepted_bound_s", "bound s", "{:.2f}"),
    ("peak_rss_mb", "RSS MB", "{:.0f}"),
    ("rss_delta_mb", "+MB", "{:.1f}"),
    ("identical_to_target", "identical", "{}"),
    ("same_prompts", "same", "{}"),
)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Platform, CPU count, torch threads and versions (and the GPU's name on CUDA)."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model_name(),
        "cpu_vector_extensions": cpu_vector_extensions(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "device": device,
        "load_average_1m": _load_average(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy_warning(machine: dict) -> str | None:
    """A warning when other processes keep the CPU busy (timings are then noisy)."""
    load, cpus = machine.get("load_average_1m"), machine.get("cpu_count")
    if load is None or not cpus or load < 0.5 * cpus:
        return None
    return (f"the 1-minute load average is {load} on {cpus} CPUs: other processes compete for the CPU and "
            f"timings are noisy (with torch threads spinning, badly so: try --threads 1)")


def _acceptance(record: MethodRecord) -> float | None:
    drafted = sum(rep.drafted or 0 for rep in record.reps)
    accepted = sum(rep.accepted or 0 for rep in record.reps)
    if all(rep.drafted is None for rep in record.reps):
        return None
    return accepted / drafted if drafted else 0.0


def _prompt_agreement(record: MethodRecord) -> dict[str, Any]:
    """How many of the first repetition's outputs equal the target's, and where the others differ."""
    if not record.divergences:
        return {"prompts_identical": None, "prompts_compared": None, "first_divergence": None,
                "same_prompts": None}
    same = sum(index is None for index in record.divergences)
    return {"prompts_identical": same, "prompts_compared": len(record.divergences),
            "first_divergence": list(record.divergences), "same_prompts": f"{same}/{len(record.divergences)}"}


def build_rows(run: BenchRun) -> list[dict[str, Any]]:
    """One dict per method (see the module docstring for the fields)."""
    rows: list[dict[str, Any]] = []
    for record in run.records:
        seconds = record.median("seconds")
        new_tokens = record.median("new_tokens")
        rows.append({
            "method": record.name,
            "seconds": seconds,
            "seconds_reps": [rep.seconds for rep in record.reps],
            "new_tokens": new_tokens,
            "tokens_per_s": new_tokens / seconds if seconds and new_tokens is not None else None,
            "target_calls": record.median("target_calls"),
            "draft_calls": record.median("draft_calls"),
            "acceptance_rate": _acceptance(record),
            "peak_rss_mb": record.peak("peak_rss_mb"),
            "rss_delta_mb": record.peak("rss_delta_mb"),
            "peak_gpu_mb": record.peak("peak_gpu_mb"),
            "identical_to_target": record.identical,
            "mismatched_groups": record.mismatches[:10],
            **_prompt_agreement(record),
            "all_accepted_bound_s": record.median("bound_seconds"),
        })
    by_name = {row["method"]: row for row in rows}
    for baseline in ("hf_ar_serial", "hf_ar_batched"):
        base = by_name.get(baseline, {}).get("seconds")
        for row in rows:
            row[f"speedup_vs_{baseline}"] = base / row["seconds"] if base and row["seconds"] else None
    return rows


def to_document(run: BenchRun, machine: dict, model_pair: dict, settings: dict | None = None) -> dict[str, Any]:
    """The JSON document: workload, machine, model pair, settings, rows (and the profile)."""
    document = {
        "workload": run.workload,
        "machine": machine,
        "model_pair": model_pair,
        "settings": {**run.settings, "reps": run.reps, **(settings or {})},
        "rows": build_rows(run),
    }
    if run.profile is not None:
        document["profile"] = run.profile
    return document


def write_json(document: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def format_cell(value: Any, fmt: str) -> str:
    """One table cell: "-" for None, yes/NO for booleans, else `fmt` (or str where it does not apply)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the rows."""
    header = [title for _, title, _ in COLUMNS]
    body = [[format_cell(row.get(key), fmt) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_profile(profile: dict) -> str:
    """The seed method's per-round time profile as text."""
    lines = [f"profile of {profile['method']}: {profile['total_s']:.2f} s, {profile['rounds']} rounds, "
             f"{profile['new_tokens']} tokens ({format_cell(profile['tokens_per_round'], '{:.2f}')} per round), "
             f"{profile['target_verify_calls']} verify forwards, {profile['draft_stage_calls']} draft stages "
             f"({profile['draft_stage_forward_calls']} draft forwards)"]
    lines.append(f"  {'stage':<24}{'ms/round':>10}{'share':>8}")
    for name, ms in profile["ms_per_round"].items():
        label = {"draft_stage_forwards": "  of which forwards",
                 "draft_stage_head_and_bookkeeping": "  head, top-k, inputs"}.get(name, name)
        lines.append(f"  {label:<24}{ms:>10.1f}{100 * (profile['share'][name] or 0):>7.1f}%")
    return "\n".join(lines)


def write_plot(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Speedup over hf_ar_serial (with the all-accepted bound) and acceptance per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["method"] for row in rows]
    speedups = [row["speedup_vs_hf_ar_serial"] or 0.0 for row in rows]
    base = next((row["seconds"] for row in rows if row["method"] == "hf_ar_serial"), None)
    bounds = [base / row["all_accepted_bound_s"] if base and row["all_accepted_bound_s"] else None for row in rows]
    acceptance = [row["acceptance_rate"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = ["#4c72b0" if row["identical_to_target"] else "#c44e52" for row in rows]
    left.bar_label(left.bar(names, speedups, color=colors), fmt="%.2f", fontsize=8)
    for index, bound in enumerate(bounds):
        if bound is not None:
            left.plot([index - 0.4, index + 0.4], [bound, bound], color="black", linestyle="--", linewidth=1)
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set_ylabel("speedup vs hf_ar_serial (median)")
    left.set_title("speed (dashed: all drafts accepted; red: not identical)")
    right.bar_label(right.bar(names, [a if a is not None else 0.0 for a in acceptance], color="#55a868"),
                    labels=["-" if a is None else f"{a:.2f}" for a in acceptance], fontsize=8)
    right.set_ylim(0, 1)
    right.set_ylabel("acceptance rate")
    right.set_title("draft acceptance")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
        for label in axis.get_xticklabels():
            label.set_horizontalalignment("right")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def save_figure(figure: Any, path: str | Path) -> Path:
    """Lay out, write (PNG, 120 dpi, parent folders made) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def format_own_process(own: dict[str, Any]) -> str:
    """One line for a method's memory in a process of its own (`cli.bench_own_process`)."""
    decoding = own.get("decoding_peak_mb")
    while_decoding = f"{decoding:.0f} MB while decoding, " if decoding is not None else ""
    outputs = "identical to" if own["identical_to_target"] else "NOT identical to"
    return (f"{own['method']} in a process of its own (only what it loads): peak RSS {while_decoding}"
            f"{own['peak_rss_mb']:.0f} MB with loading ({own['after_load_mb']:.0f} MB after loading); outputs "
            f"{outputs} the target's")
