"""Where the engine's matmul routes cross over on this CPU, measured once per CPU and model shape.

The native matmul reads each weight once and wins while a forward is bound by memory (few
rows); as rows grow, BLAS libraries' packed kernels win, and where depends on the CPU:
on the AMD EPYC the native kernel beat MKL and oneDNN up to 128 rows, on an Intel Xeon with
AVX-512 MKL overtakes it between 18 and 48 rows, and MKL beats oneDNN at every row count
there while oneDNN beats MKL on the AMD at decoding sizes (docs/BENCHMARKS.md, "Thresholds
on other CPUs"). So the engine times the three routes on its own model's weight shapes the
first time it meets a CPU (a few seconds) and keeps the result in
``native.build_dir()/row-limits.json``, keyed by CPU model, vector extensions, torch version
and the shapes. Models too small to measure keep `RowLimits()`'s defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from langchain_seed.engine import native
from langchain_seed.engine.cpu_share import CONTENDED_ABOVE, process_wait_seconds

logger = logging.getLogger(__name__)

ROW_GRID = (1, 8, 16, 24, 32, 48, 64, 128)
"""Row counts timed; a limit is the largest of these up to which a route keeps winning."""
MIN_MEASURED_WEIGHTS = 4_000_000
"""Models with fewer weight elements keep the defaults (their forwards are overhead, not matmuls)."""
HEAD_SIZED_OUT_FEATURES = 8192
"""Weights with at least this many output rows (LM heads) are judged apart from the layers'."""
REPEATS = 3
NATIVE_MARGIN = 1.10
"""The native route counts as winning up to this much slower than the best other: the native
layer forward also saves the Python of a dozen module calls (2 ms a forward) that matmul
timings do not see."""
WIDTH_ROWS = 18
"""Rows of the pass that picks the float32 products' registers: a batched verification's size."""
WIDE_MARGIN = 0.97
"""512-bit registers are kept where a pass on them takes at most this share of the 256-bit time."""
ENV_NATIVE_MAX_ROWS = "LANGCHAIN_SEED_NATIVE_MAX_ROWS"
"""Set to pin the native matmul's row limit (no measurement)."""
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
"""The CPU flags that decide which kernels BLAS libraries (and ours) take."""


@dataclass(frozen=True)
class RowLimits:
    """How many rows each route takes (the defaults: the AMD EPYC's measurements).

    Attributes:
        native_max_rows: up to this many rows the native matmul runs (at most
            `kernels.NATIVE_MAX_ROWS`).
        onednn_max_rows: above the native limit (or without it), up to this many rows layer
            weights run on oneDNN (2-4 rows weight-major on MKL); 0: always MKL.
        onednn_heads: LM-head-sized weights run on oneDNN at any row count (else MKL).
        float_tile_bits: the registers the native float32 products run on, 512 or 256
            (`native.set_float_tile_bits`; the same bits either way); 0: not measured, the
            widest the CPU has.
    """

    native_max_rows: int = 128
    onednn_max_rows: int = 16
    onednn_heads: bool = True
    float_tile_bits: int = 0


def cpu_info_field(name: str) -> str | None:
    """A field of /proc/cpuinfo's first processor (None where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), None)


def cpu_model_name() -> str:
    """The CPU's model name, as `lscpu` prints it (the platform's processor string elsewhere)."""
    return cpu_info_field("model name") or platform.processor() or platform.machine()


def cpu_vector_extensions() -> list[str]:
    """Which of `VECTOR_EXTENSIONS` this CPU has (empty where /proc/cpuinfo is missing)."""
    flags = set((cpu_info_field("flags") or "").split())
    return [flag for flag in VECTOR_EXTENSIONS if flag in flags]


def row_limits(model: torch.nn.Module, cache: Path | None = None) -> RowLimits:
    """The routes' row limits for `model`'s float32 CPU linears on this CPU, and the float
    registers for them or its linears kept in blocks (`engine.weights`, which run on the C
    kernel at every size): pinned by `ENV_NATIVE_MAX_ROWS`, read from the cache, or measured
    (and cached unless other processes held the CPU meanwhile)."""
    weights, quantized = _linear_weights(model), _quantized_linears(model)
    if os.environ.get(ENV_NATIVE_MAX_ROWS):
        return RowLimits(native_max_rows=int(os.environ[ENV_NATIVE_MAX_ROWS]))
    dense_enough = bool(weights) and sum(w.numel() for w in weights) >= MIN_MEASURED_WEIGHTS
    quantized_size = sum(q.in_features * q.out_features for q in quantized)
    quantized_enough = bool(quantized) and quantized_size >= MIN_MEASURED_WEIGHTS
    if not (dense_enough or quantized_enough) or not native.available():
        return RowLimits()
    cache = cache or native.build_dir() / "row-limits.json"
    key = _cache_key(weights, quantized)
    known = _read_cache(cache)
    if key in known:  # entries of older versions may hold fields since dropped
        return RowLimits(**{name: value for name, value in known[key].items() if name in _FIELDS})
    started, waited = time.monotonic(), process_wait_seconds()
    limits = measure(weights) if dense_enough else RowLimits()
    limits = replace(limits, float_tile_bits=measure_float_width(quantized if quantized_enough else [],
                                                                 weights if dense_enough else []))
    seconds = time.monotonic() - started
    if waited is not None and (process_wait_seconds() or 0.0) - waited > CONTENDED_ABOVE * seconds:
        logger.info("row limits not measured: other processes held the CPU (%.1f s); the defaults apply", seconds)
        return RowLimits()
    logger.info("row limits measured in %.1f s on %s: %s", seconds, cpu_model_name(), limits)
    _write_cache(cache, {**known, key: asdict(limits)})
    return limits


def measure(weights: Sequence[torch.Tensor], grid: Sequence[int] = ROW_GRID) -> RowLimits:
    """Time native, MKL (`F.linear`) and oneDNN over every one of `weights` in turn (so that
    they stream from memory, as in a forward) at every row count of `grid`, and read the
    limits off the timings."""
    layer = [w.detach() for w in weights if w.shape[0] < HEAD_SIZED_OUT_FEATURES]
    head = [w.detach() for w in weights if w.shape[0] >= HEAD_SIZED_OUT_FEATURES]
    routes = _routes()
    _route_times(layer, 1, routes)  # warm-up: first calls pay for thread start-up and packing setup
    layer_times, head_times = {}, {}
    for rows in grid:
        layer_times[rows] = _route_times(layer, rows, routes)
        head_times[rows] = _route_times(head, rows, routes)
        if _lost(layer_times[rows], head_times[rows], routes):
            routes = {name: route for name, route in routes.items() if name != "native"}
    total = {rows: {name: layer_times[rows][name] + head_times[rows][name] for name in layer_times[rows]}
             for rows in grid}
    native_rows = _winning_prefix(grid, total, "native")
    above = [rows for rows in grid if rows > native_rows] or [grid[-1]]
    onednn_heads = not head or sum(head_times[r]["onednn"] for r in above) <= sum(head_times[r]["mkl"] for r in above)
    onednn_rows = _winning_prefix(grid, layer_times, "onednn", among=("onednn", "mkl")) if "onednn" in routes else 0
    return RowLimits(native_max_rows=native_rows, onednn_max_rows=onednn_rows, onednn_heads=onednn_heads)


def measure_float_width(quantized: Sequence[Any], weights: Sequence[torch.Tensor],
                        rows: int = WIDTH_ROWS) -> int:
    """Which registers, 512 or 256 bits, run the native float32 products faster on this CPU:
    a pass over the model's linears (`quantized`, else the dense `weights`) at `rows` rows
    on each, alternating, best of `REPEATS`; 512 only where it is at least `WIDE_MARGIN`
    faster (a CPU that splits 512-bit work in two gains nothing from it). 256 where the CPU
    has no AVX-512F. The process is left at its default."""
    if not (quantized or weights) or native.set_float_tile_bits(512) != 512:
        native.set_float_tile_bits(0)
        return 256
    widths = {int(q.in_features) for q in quantized} | {int(w.shape[1]) for w in weights}
    inputs = {n: torch.randn(rows, n) for n in widths}
    times: dict[int, list[float]] = {512: [], 256: []}
    with torch.inference_mode():
        for _ in range(REPEATS + 1):  # the first round warms both up
            for bits in (512, 256):
                native.set_float_tile_bits(bits)
                times[bits].append(_float_pass_seconds(quantized, weights, inputs))
    native.set_float_tile_bits(0)
    wide, narrow = min(times[512][1:]), min(times[256][1:])
    return 512 if wide <= WIDE_MARGIN * narrow else 256


def _float_pass_seconds(quantized: Sequence[Any], weights: Sequence[torch.Tensor],
                        inputs: dict[int, torch.Tensor]) -> float:
    """Seconds for one pass of the native float32 products over `quantized` (else `weights`)."""
    if quantized:
        return _time_quantized(lambda x, q: native.quantized_linear(x, q.blocks, q.fmt), inputs, quantized)
    return _time_once(lambda x, w: native.skinny_linear(x, w), inputs, weights)


def _time_quantized(route: Callable, inputs: dict[int, torch.Tensor], linears: Sequence[Any]) -> float:
    started = time.perf_counter()
    for linear in linears:
        route(inputs[int(linear.in_features)], linear)
    return time.perf_counter() - started


def _lost(layer: dict[str, float], head: dict[str, float], routes: dict) -> bool:
    """Whether native lost at this row count (then larger ones are not timed on it)."""
    if "native" not in routes:
        return False
    return layer["native"] + head["native"] > NATIVE_MARGIN * min(layer[n] + head[n] for n in routes if n != "native")


def _winning_prefix(grid: Sequence[int], times: dict[int, dict[str, float]], route: str,
                    among: Sequence[str] | None = None) -> int:
    """The largest row count up to which `route` is the fastest at every grid point (0: never)."""
    limit = 0
    for rows in grid:
        if route not in times[rows]:
            break
        rivals = [times[rows][name] for name in (among or times[rows]) if name != route]
        if times[rows][route] > (NATIVE_MARGIN if route == "native" else 1.0) * min(rivals):
            break
        limit = rows
    return limit


def _routes() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    routes: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "native": lambda x, w: native.skinny_linear(x, w), "mkl": lambda x, w: F.linear(x, w)}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        routes["onednn"] = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return routes


def _route_times(weights: Sequence[torch.Tensor], rows: int, routes: dict[str, Callable]) -> dict[str, float]:
    """Seconds for one pass over `weights` at `rows` rows, per route (best of `REPEATS`)."""
    inputs = {in_features: torch.randn(rows, in_features) for in_features in {int(w.shape[1]) for w in weights}}
    times = {}
    with torch.inference_mode():
        for name, route in routes.items():
            times[name] = min(_time_once(route, inputs, weights) for _ in range(REPEATS))
    return times


def _time_once(route: Callable, inputs: dict[int, torch.Tensor], weights: Sequence[torch.Tensor]) -> float:
    started = time.perf_counter()
    for weight in weights:
        route(inputs[int(weight.shape[1])], weight)
    return time.perf_counter() - started


def _linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if type(m) is torch.nn.Linear and m.weight.is_cpu
            and m.weight.dtype is torch.float32 and m.weight.dim() == 2 and m.weight.is_contiguous()]


def _quantized_linears(model: torch.nn.Module) -> list[Any]:
    """The model's `weights.QuantizedLinear`s (known by their attributes: `engine.weights`
    builds on the kernels, which build on this module)."""
    return [m for m in model.modules() if type(m).__name__ == "QuantizedLinear"
            and getattr(m, "fmt", None) in native.QUANTIZED_FORMATS and m.blocks.is_cpu]


def _cache_key(weights: Sequence[torch.Tensor], quantized: Sequence[Any] = ()) -> str:
    shapes = sorted(Counter(tuple(w.shape) for w in weights).items())
    shapes += sorted(Counter((q.fmt, q.out_features, q.in_features) for q in quantized).items())
    described = repr((cpu_model_name(), cpu_vector_extensions(), torch.__version__, torch.get_num_threads(),
                      native.library_key(), ROW_GRID, shapes))
    return hashlib.sha256(described.encode()).hexdigest()[:16]


_FIELDS = frozenset(field.name for field in fields(RowLimits))


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("row limits not cached (%s): they are measured again next time", error)
