"""A seed method's memory in a process of its own: the figure the benchmark's memory goal
means ("peak RSS of `seed_batched` on the default pair").

`langchain-seed bench` runs every method in one process on the same loaded models, so a
row's peak RSS holds whatever the other methods needed too: transformers' float32 copy of
the target for its baselines, a float32 draft for its assisted generation. `measure` runs
one method again over the workload's groups, untimed, twice over (the second pass is what
a warm engine holds), in a fresh interpreter that loads only what that method needs, as
the bench loads it (`load_bench_models` with that method alone), and reports the RSS after
loading, the peak RSS while decoding and over the process's life (loading included; both
``VmHWM``: `bench.process_memory`), and the outputs, which the caller
compares with the target's greedy ones.

Run as ``python -m langchain_seed.cli.bench_own_process REQUEST.json ANSWER.json``: the
request holds the bench's flags, the method, the thread count and the groups (prompt ids,
max tokens); the answer is written as JSON (not to stdout, where a library may print).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_seed.bench.process_memory import restart_peak, status_mb

TIMEOUT_S = 900.0
"""The longest the fresh process may take (loading, then two passes over the groups)."""


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The bench's flags that survive JSON (paths as text)."""
    flags = {}
    for name, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        if value is None or isinstance(value, str | int | float | bool) or (
                isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value)):
            flags[name] = value
    return flags


def measure(args: argparse.Namespace, groups: Sequence[Any], method: str, threads: int) -> dict[str, Any]:
    """`method` over `groups` (`PromptGroup`s) in a fresh process: ``{"method", "after_load_mb",
    "decoding_peak_mb" (None where the peak cannot be restarted after loading), "peak_rss_mb"
    (loading included), "outputs": [per group, per prompt: new ids]}``. RuntimeError where that
    process fails or does not answer within `TIMEOUT_S`."""
    request = {"flags": _flags(args), "method": method, "threads": threads,
               "groups": [{"prompts": group.id_lists(), "max_tokens": group.max_tokens} for group in groups]}
    with tempfile.TemporaryDirectory(prefix="langchain-seed-own-process-") as directory:
        request_path, answer_path = Path(directory) / "request.json", Path(directory) / "answer.json"
        request_path.write_text(json.dumps(request))
        try:
            done = subprocess.run([sys.executable, "-m", __name__, str(request_path), str(answer_path)],
                                  capture_output=True, text=True, timeout=TIMEOUT_S, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{method} in a process of its own gave no answer within {TIMEOUT_S:.0f} s") from None
        if done.returncode != 0 or not answer_path.is_file():
            tail = done.stderr.strip().splitlines()[-5:]
            raise RuntimeError(f"{method} in a process of its own failed (status {done.returncode}): "
                               + " | ".join(tail))
        return dict(json.loads(answer_path.read_text()))


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    import torch

    from langchain_seed.bench.methods import make_method
    from langchain_seed.cli.bench_models import load_bench_models
    from langchain_seed.engine.stats import current_rss_mb

    torch.set_num_threads(int(request["threads"]))
    args = argparse.Namespace(**{**request["flags"], "methods": [request["method"]], "progress": False})
    method = make_method(request["method"], load_bench_models(args))
    after_load, load_peak = current_rss_mb(), status_mb("VmHWM")
    restarted = restart_peak()
    try:
        for _ in range(2):
            outputs = []
            for group in request["groups"]:
                method.forget_prompts()
                outputs.append(method.run_group(group["prompts"], int(group["max_tokens"])).token_ids)
    finally:
        method.close()
    decode_peak = status_mb("VmHWM")
    return {"method": request["method"], "after_load_mb": round(after_load, 1),
            "decoding_peak_mb": round(decode_peak, 1) if restarted else None,
            "peak_rss_mb": round(max(load_peak, decode_peak), 1), "outputs": outputs}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("request", type=Path)
    parser.add_argument("answer", type=Path)
    args = parser.parse_args(argv)
    args.answer.write_text(json.dumps(_serve(json.loads(args.request.read_text()))))


if __name__ == "__main__":
    main()
