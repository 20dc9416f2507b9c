"""The benchmark harness behind `langchain-seed bench` (DESIGN.md section 5).

- `workloads`: the datasets' (GSM8K, Creative Writing, Blocksworld) prompt groups as
  Tree-of-Thoughts sends them (tot-step, single, tot-full);
- `methods`: the decoding methods compared (transformers serial / batched / assisted,
  and the SeeD engine's speculative, rounds and batched modes); `peers`: llama.cpp on the
  target's own GGUF (optional, the ``peers`` extra);
- `protocol`: interleaved, repeated, timed runs, compared token for token with the
  target's greedy output; `probes`: forward counts and peak memory; `records`: what a
  run records; `profile`: where a seed method's time goes per round;
- `report`: rows, table, JSON and plot; `paper`: the SeeD paper's comparison on whole
  trees of its three datasets (`bench --paper`). The subcommand is `langchain_seed.cli.bench`.

Names are imported lazily; torch and transformers only when a benchmark runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BenchRun": "records",
    "run_benchmark": "protocol",
    "run_tot_full": "protocol",
    "METHODS": "methods",
    "BenchModels": "methods",
    "make_method": "methods",
    "WORKLOADS": "workloads",
    "Workload": "workloads",
    "build_single": "workloads",
    "build_tot_full": "workloads",
    "build_tot_step": "workloads",
}

# Spelled out (sorted) so static tools see the exports; the names are `_EXPORTS`'s keys.
__all__ = [
    "BenchModels",
    "BenchRun",
    "METHODS",
    "WORKLOADS",
    "Workload",
    "build_single",
    "build_tot_full",
    "build_tot_step",
    "make_method",
    "run_benchmark",
    "run_tot_full",
]


def __getattr__(name: str) -> Any:
    """Import the exported names lazily (the bench's sibling scripts stay light to import)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'langchain_seed.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"langchain_seed.bench.{_EXPORTS[name]}"), name)
