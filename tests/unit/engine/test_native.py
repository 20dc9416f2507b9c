"""The native C kernels: built where they can be, within float32 rounding of a float64
reference (numerics.py: bounds derived from each problem, so they hold for any CPU's
summation order), one OpenMP runtime, a clear fallback where they cannot be built, and
routed only for decoding sizes.

The bounds were checked against deliberate breaks of the kernels' output (each caught):
a dropped input feature, a weight row taken from its neighbour, a 1e-3 relative scale
error, a mean over n - 1 in the norm, eps left out, a wrong key/value head, a slot left
out of the softmax, a slot's probability moved to its neighbour."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from langchain_seed.engine import kernels, native

import numerics
from engine_fixtures import needs_kernel

BUILDABLE_HERE = (sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("cc") is not None
                  and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


@pytest.fixture
def rebuilt(monkeypatch, tmp_path):
    """A fresh `native._library()` (built under tmp_path) for the test, the shared one after."""
    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path))
    native._library.cache_clear()
    yield
    monkeypatch.undo()
    native._library.cache_clear()


@pytest.mark.skipif(not BUILDABLE_HERE, reason="no Linux x86-64 AVX2 machine with a C compiler")
def test_the_kernel_builds_on_a_linux_x86_machine_with_a_compiler():
    assert native.available(), native.unavailable_reason()
    assert native.unavailable_reason() is None


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 17, 48, 128])
@pytest.mark.parametrize("in_features, out_features", [(576, 300), (13, 5), (8, 1), (40, 7)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_linear_equals_f_linear(rows, in_features, out_features, with_bias):
    """Both within the dot-product bound of the float64 product (torch's BLAS too: the
    bound holds for any summation order)."""
    torch.manual_seed(rows * 1000 + in_features + out_features)
    x, weight = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    bias = torch.randn(out_features) if with_bias else None
    got = native.skinny_linear(x, weight, bias)
    assert got.shape == (rows, out_features) and got.is_contiguous()
    reference = numerics.linear(x, weight, bias)
    numerics.assert_within(got, reference, "native")
    numerics.assert_within(F.linear(x, weight, bias), reference, "F.linear")


@needs_kernel
@pytest.mark.parametrize("in_features, out_features", [(576, 300), (40, 7)])
def test_a_rows_output_does_not_depend_on_the_other_rows(in_features, out_features):
    """Each sum's order is fixed by the weight's shape alone: a sequence verified in a batch
    gets the bits it would get on its own."""
    torch.manual_seed(7)
    x, weight = torch.randn(20, in_features), torch.randn(out_features, in_features)
    together = native.skinny_linear(x, weight)
    for row in (0, 1, 2, 19):
        assert torch.equal(native.skinny_linear(x[row:row + 1], weight)[0], together[row])
    assert torch.equal(native.skinny_linear(x[3:8], weight), together[3:8])


@needs_kernel
def test_skinny_linear_keeps_leading_dimensions_and_takes_strided_input():
    x = torch.randn(3, 16, 5).transpose(1, 2)  # [3, 5, 16], not contiguous
    weight = torch.randn(9, 16)
    got = native.skinny_linear(x, weight)
    assert got.shape == (3, 5, 9)
    numerics.assert_within(got, numerics.linear(x, weight))


@needs_kernel
@pytest.mark.parametrize("batch, heads, tokens, dim", [(1, 9, 1, 64), (3, 3, 6, 64), (2, 4, 5, 6)])
def test_rotary_equals_transformers_bit_for_bit(batch, heads, tokens, dim):
    from transformers.models.llama.modeling_llama import rotate_half

    torch.manual_seed(batch + heads + tokens)
    x = torch.randn(batch, tokens, heads, dim).transpose(1, 2)  # as transformers hands it over
    angles = torch.randn(batch, tokens, dim // 2) * 50
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    expected = x * cos[:, None] + rotate_half(x) * sin[:, None]
    got = native.rotary(x, cos, sin)
    assert got.is_contiguous() and torch.equal(got, expected)


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 6, 576), (83, 13), (2, 5, 64)])
def test_rms_norm_equals_transformers_to_rounding(shape):
    """The native norm and transformers' both within the norm's bound of the float64 one
    (scale 1e-3: eps matters)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(shape[-1])
    norm = LlamaRMSNorm(shape[-1], eps=1e-5)
    norm.weight.data.normal_()
    for scale in (1e-3, 1.0, 40.0):
        x = torch.randn(shape) * scale
        got = native.rms_norm(x, norm.weight.detach(), norm.variance_epsilon)
        assert got.shape == x.shape and got.is_contiguous()
        reference = numerics.rms_norm(x, norm.weight, norm.variance_epsilon)
        numerics.assert_within(got, reference, f"native, scale {scale}")
        numerics.assert_within(norm(x).detach(), reference, f"transformers, scale {scale}")
    strided = torch.randn(shape[-1], *shape[:-1]).movedim(0, -1)
    numerics.assert_within(native.rms_norm(strided, norm.weight.detach(), 1e-5),
                           numerics.rms_norm(strided, norm.weight, 1e-5))
    with pytest.raises(ValueError, match="does not fit"):
        native.rms_norm(x, torch.ones(shape[-1] + 1), 1e-5)


@needs_kernel
@pytest.mark.parametrize("batch, heads, kv_heads, new, slots, dim",
                         [(1, 9, 3, 1, 151, 64), (3, 9, 3, 6, 156, 64), (2, 4, 4, 5, 37, 16), (1, 6, 2, 40, 45, 8)])
@pytest.mark.parametrize("masked", [True, False])
def test_attention_equals_torchs_sdpa(batch, heads, kv_heads, new, slots, dim, masked):
    """The native kernel and torch's SDPA both within the attention bound of the float64 one."""
    torch.manual_seed(new * slots)
    query, key, value = torch.randn(batch, heads, new, dim), torch.randn(batch, kv_heads, slots, dim), \
        torch.randn(batch, kv_heads, slots, dim) * 3
    visible = torch.rand(batch, 1, new, slots) > 0.4
    visible[..., -1] = True
    mask = torch.zeros(visible.shape).masked_fill_(~visible, torch.finfo(torch.float32).min) if masked else None
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3, enable_gqa=True)
    got = native.attention(query, key, value, mask, 0.3)
    assert got.shape == (batch, new, heads, dim) and got.is_contiguous()
    reference = numerics.attention(query, key, value, mask, 0.3)
    numerics.assert_within(got.transpose(1, 2), reference, "native")
    numerics.assert_within(expected, reference, "SDPA")


@needs_kernel
@pytest.mark.parametrize("shape, out_features",
                         [((1, 576), 1536), ((3, 6, 576), 1536), ((130, 64), 96), ((2, 5, 40), 7)])
def test_gate_up_silu_equals_the_eager_mlp_half(shape, out_features):
    """The fused kernel and the eager ops both within the bound of the float64 MLP half."""
    torch.manual_seed(out_features)
    x = torch.randn(shape)
    gate, up = torch.randn(out_features, shape[-1]) * 0.1, torch.randn(out_features, shape[-1]) * 0.1
    got = native.gate_up_silu(x, gate, up)
    assert got.shape == (*shape[:-1], out_features)
    reference = numerics.gate_up_silu(x, gate, up)
    numerics.assert_within(got, reference, "native")
    numerics.assert_within(F.silu(F.linear(x, gate)) * F.linear(x, up), reference, "eager")
    with pytest.raises(ValueError, match="do not fit"):
        native.gate_up_silu(x, gate, up[:-1])


@needs_kernel
def test_attention_rejects_inputs_it_does_not_fit():
    query, key = torch.randn(1, 4, 2, 16), torch.randn(1, 2, 7, 16)
    with pytest.raises(ValueError, match="do not fit"):
        native.attention(query, key, key, torch.zeros(1, 1, 2, 6), 1.0)  # mask over 6 slots, not 7
    with pytest.raises(ValueError, match="do not fit"):
        native.attention(torch.randn(1, 4, 2, 12), torch.randn(1, 2, 7, 12), torch.randn(1, 2, 7, 12), None, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        native.attention(torch.randn(1, 3, 2, 16), key, key, None, 1.0)  # 3 heads on 2 kv heads


@needs_kernel
def test_rotary_rejects_inputs_it_does_not_fit():
    cos = sin = torch.ones(1, 4, 8)
    with pytest.raises(ValueError, match="does not fit"):
        native.rotary(torch.randn(1, 2, 4, 6), cos, sin)  # dim 6 against 8
    with pytest.raises(ValueError, match="last stride"):
        native.rotary(torch.randn(1, 2, 8, 4).transpose(2, 3), cos, sin)  # rows not contiguous


@needs_kernel
def test_the_kernel_shares_torchs_openmp_runtime():
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) == 1, runtimes


@needs_kernel
def test_native_routes_decoding_sizes_only(monkeypatch):
    routed = []
    skinny = native.skinny_linear
    monkeypatch.setattr(native, "skinny_linear", lambda x, w, b=None: routed.append(x.shape[0]) or skinny(x, w, b))
    weight = torch.randn(48, 16)
    with torch.inference_mode(), kernels.engine_kernels("native"):
        for rows in (1, 3, kernels.NATIVE_MAX_ROWS, kernels.NATIVE_MAX_ROWS + 1):
            kernels.linear(torch.randn(rows, 16), weight)
    with torch.inference_mode(), kernels.engine_kernels("onednn"):
        kernels.linear(torch.randn(3, 16), weight)
    with kernels.engine_kernels("native"):
        kernels.linear(torch.randn(3, 16, requires_grad=True), weight)  # autograd: torch's
    assert routed == [1, 3, kernels.NATIVE_MAX_ROWS]


def test_switched_off_by_the_environment(monkeypatch, rebuilt):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert not native.available()
    assert native.unavailable_reason() == f"{native.ENV_SWITCH}=0"
    assert kernels.effective_kernel("native") == "onednn"
    with pytest.raises(RuntimeError, match="unavailable"):
        native.skinny_linear(torch.randn(2, 8), torch.randn(4, 8))
    weight = torch.randn(4, 8)
    x = torch.randn(2, 8)
    with torch.inference_mode(), kernels.engine_kernels("native"):  # falls back to the other routes
        numerics.assert_within(kernels.linear(x, weight), numerics.linear(x, weight))


@pytest.mark.skipif(not BUILDABLE_HERE, reason="no Linux x86-64 AVX2 machine with a C compiler")
def test_a_failing_compiler_falls_back_with_the_reason(monkeypatch, rebuilt, tmp_path, caplog):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: no space left' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with caplog.at_level("WARNING", logger=native.__name__):
        assert not native.available()
    assert "exited with 1" in native.unavailable_reason() and "no space left" in native.unavailable_reason()
    assert "native kernels not used" in caplog.text
    assert not list((tmp_path / "native").glob("*.so"))


@pytest.mark.skipif(not BUILDABLE_HERE, reason="no Linux x86-64 AVX2 machine with a C compiler")
def test_the_build_is_cached(rebuilt, tmp_path):
    assert native.available()
    built = list((tmp_path / "native").glob("seed_native-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native._library.cache_clear()
    assert native.available()
    assert built[0].stat().st_mtime_ns == stamp


@needs_kernel
@pytest.mark.parametrize("tokens", [1, 3])
def test_attention_does_not_depend_on_masked_slots_or_where_the_visible_ones_sit(tokens):
    """A query's output is the same bits over its visible keys alone, or with masked slots
    (holding anything, NaN included) spread between and after them, in a batch with other rows."""
    torch.manual_seed(tokens)
    query = torch.randn(1, 4, tokens, 16)
    key, value = torch.randn(1, 2, 37, 16), torch.randn(1, 2, 37, 16)
    alone = native.attention(query, key, value, None if tokens == 1 else _causal_tail(tokens, 37), 0.25)
    holes = torch.tensor([3, 9, 10, 20, 36, 41])  # the masked slots' positions in the wider cache
    wide = 37 + len(holes) + 2
    visible_slots = torch.tensor([s for s in range(wide) if s not in holes.tolist()][:37])
    wide_key = torch.full((2, 2, wide, 16), float("nan"))
    wide_value = torch.full((2, 2, wide, 16), float("nan"))
    wide_key[0, :, visible_slots], wide_value[0, :, visible_slots] = key[0], value[0]
    wide_key[1], wide_value[1] = torch.randn(2, wide, 16), torch.randn(2, wide, 16)
    mask = torch.full((2, 1, tokens, wide), float("-inf"))
    mask[0, :, :, visible_slots] = _causal_tail(tokens, 37)[0]
    mask[1] = 0.0
    batched = native.attention(torch.cat([query, torch.randn_like(query)]), wide_key, wide_value, mask, 0.25)
    assert torch.equal(batched[:1], alone)


@needs_kernel
@pytest.mark.parametrize("tokens", [2, 5, 11])
@pytest.mark.parametrize("slots", [9, 38])
def test_a_query_rows_attention_does_not_depend_on_the_rows_beside_it(tokens, slots):
    """Rows are scored two at a time and their softmax sums run side by side: each row's
    output is still the same bits as that row alone."""
    torch.manual_seed(tokens * slots)
    query = torch.randn(2, 6, tokens, 64)
    key, value = torch.randn(2, 3, slots, 64), torch.randn(2, 3, slots, 64)
    mask = _causal_tail(tokens, slots).expand(2, 1, tokens, slots).contiguous()
    together = native.attention(query, key, value, mask, 0.125)
    for t in range(tokens):
        alone = native.attention(query[:, :, t:t + 1].contiguous(), key, value, mask[:, :, t:t + 1].contiguous(), 0.125)
        assert torch.equal(together[:, t:t + 1], alone)


def _causal_tail(tokens: int, slots: int) -> torch.Tensor:
    """`[1, 1, tokens, slots]`: new token t sees every slot up to its own (the last `tokens` slots)."""
    visible = torch.ones(tokens, slots, dtype=torch.bool).tril(slots - tokens)
    return torch.zeros(1, 1, tokens, slots).masked_fill_(~visible, float("-inf"))


_FLOAT_PATH_SCRIPT = """
import hashlib, torch
from langchain_seed.engine import native
from langchain_seed.engine.weights import formats
torch.manual_seed(3)
digest = hashlib.sha256()
for rows in (1, 2, 5, 6, 7, 11, 12, 13, 17, 25, 130):  # every tile size and remainder
    for n_in, n_out in ((576, 40), (64, 1536), (40, 7), (24, 9)):  # tails of features and of n_in
        x, w, b = torch.randn(rows, n_in), torch.randn(n_out, n_in), torch.randn(n_out)
        outs = [native.skinny_linear(x, w, b), native.gate_up_silu(x, w, w * 0.5)]
        if n_in % 32 == 0:
            for fmt in ("q4_1", "q8_0"):
                blocks = formats.quantize(w, fmt)
                outs += [native.quantized_linear(x, blocks, fmt, b), native.quantized_gate_up_silu(x, blocks, blocks, fmt)]
        for out in outs:
            digest.update(out.numpy().tobytes())
for batch, heads, kv_heads, new, slots, dim in [(3, 9, 3, 6, 156, 64), (2, 4, 4, 5, 37, 16), (1, 3, 3, 7, 300, 72)]:
    query, key, value = (torch.randn(batch, h, t, dim) for h, t in ((heads, new), (kv_heads, slots), (kv_heads, slots)))
    mask = torch.zeros(batch, 1, new, slots).masked_fill_(torch.rand(batch, 1, new, slots) > 0.7, float("-inf"))
    digest.update(native.attention(query, key, value, mask, 0.125).numpy().tobytes())
print(native.float_tile_bits(), digest.hexdigest())
"""


@needs_kernel
def test_the_256_and_512_bit_kernels_give_the_same_bits():
    """The 512-bit tiles hold two weight rows' (attention: two query rows') 8-lane partial sums
    side by side and reduce them as the 256-bit code does (linear_tiles.h, attention.c), so
    dense, quantised and MLP products and attention are the same bits on either width: a
    float model computes alike on any x86-64 machine. Where the CPU lacks AVX-512F both runs
    take 256 bits and this checks nothing more."""

    def run(path: str) -> list[str]:
        env = {**os.environ, "LANGCHAIN_SEED_FLOAT_PATH": path}
        return subprocess.run([sys.executable, "-c", _FLOAT_PATH_SCRIPT], env=env, capture_output=True, text=True,
                              check=True, timeout=300).stdout.split()

    widest, narrow = run(""), run("avx2")
    assert narrow[0] == "256" and widest[0] in ("256", "512")
    assert widest[1] == narrow[1]
