"""The matmul routes' row limits: read off timings, measured once per CPU and model shape,
cached, pinned by the environment, and applied only inside the engine's block."""

from __future__ import annotations

import json

import pytest
import torch

from langchain_seed.engine import calibration, kernels, native
from langchain_seed.engine.calibration import ROW_GRID, RowLimits

from engine_fixtures import needs_kernel


def _times(native_ms: list[float], mkl_ms: list[float], onednn_ms: list[float]) -> dict[int, dict[str, float]]:
    return {rows: {"native": n, "mkl": m, "onednn": o}
            for rows, n, m, o in zip(ROW_GRID, native_ms, mkl_ms, onednn_ms)}


def test_a_limit_is_the_largest_row_count_up_to_which_the_route_always_wins():
    times = _times(native_ms=[1, 2, 3, 9, 9, 1, 1, 1], mkl_ms=[5] * 8, onednn_ms=[6] * 8)
    assert calibration._winning_prefix(ROW_GRID, times, "native") == ROW_GRID[2]  # a later win does not count
    assert calibration._winning_prefix(ROW_GRID, times, "onednn", among=("onednn", "mkl")) == 0
    never = _times(native_ms=[9] * 8, mkl_ms=[5] * 8, onednn_ms=[6] * 8)
    assert calibration._winning_prefix(ROW_GRID, never, "native") == 0


def _model(*shapes: tuple[int, int]) -> torch.nn.Module:
    return torch.nn.Sequential(*(torch.nn.Linear(i, o, bias=False) for o, i in shapes))


def test_small_models_keep_the_defaults_and_the_environment_pins_the_native_limit(monkeypatch):
    monkeypatch.setattr(calibration, "measure", lambda weights: pytest.fail("nothing to measure"))
    assert calibration.row_limits(_model((8, 8))) == RowLimits()
    monkeypatch.setenv(calibration.ENV_NATIVE_MAX_ROWS, "24")
    assert calibration.row_limits(_model((8, 8))).native_max_rows == 24


@needs_kernel
def test_limits_are_measured_once_then_read_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(calibration.ENV_NATIVE_MAX_ROWS, raising=False)
    monkeypatch.setattr(calibration, "MIN_MEASURED_WEIGHTS", 0)
    monkeypatch.setattr(calibration, "process_wait_seconds", lambda: 0.0)  # an idle CPU, whatever runs now
    measured = []
    monkeypatch.setattr(calibration, "measure", lambda weights: measured.append(1) or RowLimits(32, 0, False))
    monkeypatch.setattr(calibration, "measure_float_width", lambda quantized, weights: 256)
    model, cache = _model((64, 32), (32, 64)), tmp_path / "limits.json"
    expected = RowLimits(32, 0, False, float_tile_bits=256)
    assert calibration.row_limits(model, cache) == expected
    assert calibration.row_limits(model, cache) == expected
    assert measured == [1]
    assert calibration.row_limits(_model((64, 48)), cache) == expected  # other shapes: measured
    assert measured == [1, 1]


@needs_kernel
def test_a_measurement_on_real_weights_gives_limits_on_the_grid():
    torch.manual_seed(0)
    limits = calibration.measure([torch.randn(256, 128), torch.randn(128, 256), torch.randn(9000, 128)],
                                 grid=(1, 8, 16))
    assert limits.native_max_rows in (0, 1, 8, 16) and limits.onednn_max_rows in (0, 1, 8, 16)


@needs_kernel
def test_the_native_matmul_takes_only_the_rows_its_limit_allows(monkeypatch):
    taken = []
    skinny_linear = native.skinny_linear
    monkeypatch.setattr(native, "skinny_linear", lambda *a: taken.append(a[0].shape[0]) or skinny_linear(*a))
    weight = torch.randn(48, 16)
    with torch.inference_mode():
        with kernels.engine_kernels("native", RowLimits(native_max_rows=8)):
            for rows in (1, 8, 9, 40):
                kernels.linear(torch.randn(rows, 16), weight)
        with kernels.engine_kernels("native"):  # the defaults
            kernels.linear(torch.randn(40, 16), weight)
    assert taken == [1, 8, 40]
    assert kernels.native_max_rows() == kernels.DEFAULT_LIMITS.native_max_rows  # outside any block


def test_without_a_oneDNN_win_the_matmul_above_the_native_limit_is_torchs(monkeypatch):
    routes = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(kernels.torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: routes.append("onednn") or original(*a), raising=False)
    monkeypatch.setattr(kernels, "weight_major_linear", lambda *a: routes.append("weight_major"))
    with torch.inference_mode(), kernels.engine_kernels("onednn", RowLimits(0, 0, False)):
        for rows in (1, 3, 16):
            kernels.linear(torch.randn(rows, 16), torch.randn(48, 16))
        kernels.linear(torch.randn(20, 16), torch.randn(kernels.HEAD_SIZED_OUT_FEATURES, 16))
    assert routes == []


def _quantized_model():
    from langchain_seed.engine.weights import formats
    from langchain_seed.engine.weights.modules import QuantizedLinear

    return torch.nn.Sequential(QuantizedLinear(formats.quantize(torch.randn(64, 32), "q4_1"), "q4_1", 32),
                               QuantizedLinear(formats.quantize(torch.randn(32, 64), "q4_1"), "q4_1", 64))


@needs_kernel
def test_a_model_in_blocks_measures_its_float_width_and_caches_it(monkeypatch, tmp_path):
    """Linears kept in blocks run on the C kernel at every size: only the registers are
    measured for them, once, then read from the cache."""
    monkeypatch.delenv(calibration.ENV_NATIVE_MAX_ROWS, raising=False)
    monkeypatch.setattr(calibration, "MIN_MEASURED_WEIGHTS", 0)
    monkeypatch.setattr(calibration, "process_wait_seconds", lambda: 0.0)
    monkeypatch.setattr(calibration, "measure", lambda weights: pytest.fail("no float32 linears to measure"))
    measured = []
    monkeypatch.setattr(calibration, "measure_float_width",
                        lambda quantized, weights: measured.append(len(quantized)) or 512)
    cache = tmp_path / "limits.json"
    assert calibration.row_limits(_quantized_model(), cache) == RowLimits(float_tile_bits=512)
    assert calibration.row_limits(_quantized_model(), cache) == RowLimits(float_tile_bits=512)
    assert measured == [2]


def test_a_cached_entry_of_an_older_version_is_read_without_its_dropped_fields(monkeypatch, tmp_path):
    monkeypatch.delenv(calibration.ENV_NATIVE_MAX_ROWS, raising=False)
    monkeypatch.setattr(calibration, "MIN_MEASURED_WEIGHTS", 0)
    monkeypatch.setattr(calibration, "measure_float_width", lambda quantized, weights: pytest.fail("cached"))
    monkeypatch.setattr(native, "available", lambda: True)
    model = _quantized_model()
    cache = tmp_path / "limits.json"
    key = calibration._cache_key([], list(model))
    cache.write_text(json.dumps({key: {"native_max_rows": 64, "quantized_max_rows": 128, "float_tile_bits": 256}}))
    assert calibration.row_limits(model, cache) == RowLimits(native_max_rows=64, float_tile_bits=256)


@needs_kernel
@pytest.mark.parametrize("slower", [512, 256])
def test_the_float_registers_are_the_faster_width(monkeypatch, slower):
    """512-bit registers are chosen only where a pass on them is faster; the process is left at
    its default. The widths and their timings are simulated (a CPU with or without AVX-512F
    chooses alike)."""
    width = {"bits": 0}

    def set_bits(bits):
        width["bits"] = bits
        return bits or 512

    monkeypatch.setattr(native, "set_float_tile_bits", set_bits)
    monkeypatch.setattr(calibration, "_float_pass_seconds", lambda *args: 4.0 if width["bits"] == slower else 1.0)
    assert calibration.measure_float_width(list(_quantized_model()), []) == (256 if slower == 512 else 512)
    assert width["bits"] == 0


@needs_kernel
def test_the_float_registers_are_measured_on_real_kernels_and_change_no_bit():
    model = _quantized_model()
    x = torch.randn(18, 32)
    with torch.inference_mode(), kernels.engine_kernels("native"):
        before = model(x)
    assert calibration.measure_float_width(list(model), []) in (256, 512)
    for bits in (256, 512, 0):
        in_force = native.set_float_tile_bits(bits)
        assert in_force == native.float_tile_bits() and in_force in (256, 512)
        with torch.inference_mode(), kernels.engine_kernels("native"):
            assert torch.equal(model(x), before)
    with pytest.raises(ValueError, match="must be 0, 256 or 512"):
        native.set_float_tile_bits(128)
