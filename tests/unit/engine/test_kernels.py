"""The engine's kernels (native, oneDNN and weight-major linears, grouped-query attention):
same values as torch's and transformers', only inside the engine's block, only in its thread.
The native C kernel itself is tested in test_native.py."""

from __future__ import annotations

import threading

import pytest
import torch

from langchain_seed.engine import kernels, native, routing

import numerics
from engine_fixtures import needs_kernel

pytestmark = pytest.mark.skipif(not kernels.onednn_available(), reason="torch built without oneDNN")


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.SiLU(), torch.nn.Linear(48, 300, bias=False))


@pytest.mark.parametrize("kernel", kernels.ENGINE_KERNELS)
@pytest.mark.parametrize("rows", [1, 3, 5, 16, 40])
def test_installed_linears_match_torch_inside_the_block(rows, kernel):
    model, reference = _mlp(), _mlp()
    assert routing.install(model).linears == 2
    x = torch.randn(2, rows, 16)
    with torch.inference_mode():
        expected = reference(x)
        with kernels.engine_kernels(kernel):
            got = model(x)
    in_float64 = numerics.linear(numerics.silu(numerics.linear(x, reference[0].weight, reference[0].bias)),
                                 reference[2].weight)
    numerics.assert_within(got, in_float64, kernel)
    numerics.assert_within(expected, in_float64, "torch")


def test_outside_the_block_installed_linears_are_torch_bit_for_bit(monkeypatch):
    model, reference = _mlp(), _mlp()
    routing.install(model)
    routing.install(model)  # twice is harmless
    calls = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(kernels.torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: calls.append(1) or original(*a), raising=False)
    x = torch.randn(5, 16)
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x)) and not calls
        with kernels.engine_kernels("onednn"):
            model(x)
    assert len(calls) == 2


def test_prefill_sized_inputs_stay_on_torch_except_for_heads(monkeypatch):
    calls = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(kernels.torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: calls.append(a[1].shape[0]) or original(*a), raising=False)
    small, head = torch.randn(48, 16), torch.randn(kernels.HEAD_SIZED_OUT_FEATURES, 16)
    rows = kernels.DEFAULT_LIMITS.onednn_max_rows + 1
    with torch.inference_mode(), kernels.engine_kernels("onednn"):
        kernels.linear(torch.randn(rows, 16), small)
        kernels.linear(torch.randn(1, rows, 16), head)
        kernels.linear(torch.randn(kernels.DEFAULT_LIMITS.onednn_max_rows, 16), small)
    assert calls == [kernels.HEAD_SIZED_OUT_FEATURES, 48]


def test_the_block_is_per_thread_and_nests():
    seen = {}

    def other_thread():
        seen["other"] = getattr(kernels._state, "kernel", None)

    with kernels.engine_kernels("onednn"):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        with kernels.engine_kernels("torch"):
            seen["inner"] = kernels._state.kernel
        seen["outer"] = kernels._state.kernel
    assert seen == {"other": None, "inner": None, "outer": "onednn"}
    assert kernels._state.kernel is None


def test_autograd_and_other_dtypes_fall_back_to_torch():
    model = _mlp()
    routing.install(model)
    x = torch.randn(4, 16, requires_grad=True)
    with kernels.engine_kernels():
        model(x).sum().backward()  # the engine's kernels have no backward: torch's is used
    assert x.grad is not None and x.grad.shape == (4, 16)
    half = _mlp().to(torch.bfloat16)
    assert routing.install(half).linears == 0


def test_engine_rejects_an_unknown_kernel(tiny_target):
    from langchain_seed.engine import SeedEngine

    with pytest.raises(ValueError, match="linear_kernel"):
        SeedEngine(tiny_target, linear_kernel="fast")


@pytest.mark.parametrize("shape", [(2, 16), (3, 16), (4, 16), (1, 3, 16), (2, 2, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_weight_major_linear_matches_torch(shape, with_bias):
    torch.manual_seed(1)
    weight, bias = torch.randn(300, 16), (torch.randn(300) if with_bias else None)
    x = torch.randn(*shape)
    got = kernels.weight_major_linear(x, weight, bias)
    assert got.shape == (*shape[:-1], 300) and got.is_contiguous()
    numerics.assert_within(got, numerics.linear(x, weight, bias))


def test_two_to_four_rows_run_weight_major_and_others_on_onednn(monkeypatch):
    routes = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(kernels.torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: routes.append(("onednn", a[0].shape[0])) or original(*a), raising=False)
    weight_major = kernels.weight_major_linear
    monkeypatch.setattr(kernels, "weight_major_linear",
                        lambda x, w, b=None: routes.append(("weight_major", x.numel() // x.shape[-1]))
                        or weight_major(x, w, b))
    weight = torch.randn(48, 16)
    with torch.inference_mode(), kernels.engine_kernels("onednn"):
        for rows in (1, 2, 3, 4, 5, 16):
            kernels.linear(torch.randn(rows, 16), weight)
    assert routes == [("onednn", 1), ("weight_major", 2), ("weight_major", 3), ("weight_major", 4),
                      ("onednn", 5), ("onednn", 16)]


def _attention_inputs(new: int, slots: int, seed: int = 0):
    """A grouped-query layer (8 query heads on 2 key/value heads) and a mask hiding some slots."""
    torch.manual_seed(seed)
    query = torch.randn(3, 8, new, 16)
    key, value = torch.randn(3, 2, slots, 16), torch.randn(3, 2, slots, 16)
    visible = torch.rand(3, 1, new, slots) > 0.3
    visible[..., 0] = True
    mask = torch.zeros(visible.shape).masked_fill_(~visible, torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    module.num_key_value_groups = 4
    return module, query, key, value, mask


@pytest.mark.parametrize("new", [1, 5, 15])
def test_grouped_attention_equals_transformers_sdpa_bit_for_bit(new):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module, query, key, value, mask = _attention_inputs(new, 40 + new)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    with torch.inference_mode(), kernels.engine_kernels("onednn"):
        assert kernels._takes_grouped_path(module, query, key, value, mask, {}) == (new > 1)
        got, weights = kernels.engine_attention(module, query, key, value, mask, scaling=0.25)
    assert weights is None and got.shape == (3, new, 8, 16)
    assert torch.equal(got, expected)


def test_attention_outside_the_block_or_unusual_calls_go_to_transformers(monkeypatch):
    from transformers.integrations import sdpa_attention
    from transformers.modeling_utils import AttentionInterface

    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention.sdpa_attention_forward  # what it hands to
    handed = []
    sdpa = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **k: handed.append(1) or sdpa(*a, **k))
    module, query, key, value, mask = _attention_inputs(4, 20)
    with torch.inference_mode():
        kernels.engine_attention(module, query, key, value, mask)  # outside the block
        with kernels.engine_kernels("onednn"):
            kernels.engine_attention(module, query, key, value, None)  # no mask: transformers' own GQA
            kernels.engine_attention(module, query, key, value, mask, position_bias=torch.zeros(1, 8, 4, 20))
            plain = torch.nn.Module()
            plain.num_key_value_groups = 1
            kernels.engine_attention(plain, query, torch.randn(3, 8, 20, 16), torch.randn(3, 8, 20, 16), mask)
            kernels.engine_attention(module, query, key, value, mask)  # the grouped path
            kernels.engine_attention(module, query[:, :, :1], key, value, mask[:, :, :1])  # one token
    assert len(handed) == 5


@pytest.mark.parametrize("kernel", kernels.ENGINE_KERNELS)
def test_routed_rms_norms_match_the_modules_inside_the_block_only(kernel, monkeypatch):
    """oneDNN: `F.rms_norm`, the module's own bits; native: the C norm, equal to rounding."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(3)
    norm, reference = LlamaRMSNorm(40, eps=1e-5), LlamaRMSNorm(40, eps=1e-5)
    norm.weight.data.normal_()
    reference.load_state_dict(norm.state_dict())
    model = torch.nn.Sequential(norm)
    routing.install(model)
    routing.install(model)  # twice is harmless
    fused = []
    for owner, name in ((kernels.F, "rms_norm"), (native, "rms_norm")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _original=original, **k: fused.append(1) or _original(*a, **k))
    for x in (torch.randn(3, 6, 40) * 7, torch.randn(1, 1, 40), torch.randn(5, 2, 40).transpose(0, 1)):
        with torch.inference_mode():
            outside = model(x)
            with kernels.engine_kernels(kernel):
                inside = model(x)
        assert torch.equal(outside, reference(x))
        if kernels.effective_kernel(kernel) == "native":
            numerics.assert_within(inside, numerics.rms_norm(x, reference.weight, reference.variance_epsilon))
        else:
            assert torch.equal(inside, reference(x))
    assert len(fused) == 3  # only inside the block
    with kernels.engine_kernels(kernel):
        assert model(x.double()).dtype == torch.float64  # other dtypes: the module's own forward
    assert len(fused) == 3


@needs_kernel
def test_silu_mlps_run_their_first_half_natively_inside_the_native_block(monkeypatch):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    config = LlamaConfig(hidden_size=32, intermediate_size=72, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(5)
    mlp, reference = LlamaMLP(config), LlamaMLP(config)
    reference.load_state_dict(mlp.state_dict())
    routing.install(mlp)
    fused = []
    gate_up_silu = native.gate_up_silu
    monkeypatch.setattr(native, "gate_up_silu", lambda *a: fused.append(1) or gate_up_silu(*a))
    x = torch.randn(3, 6, 32)
    with torch.inference_mode():
        assert torch.equal(mlp(x), reference(x))  # outside the block
        with kernels.engine_kernels("onednn"):
            mlp(x)
        with kernels.engine_kernels("native"):
            got = mlp(x)
            mlp(torch.randn(1, kernels.NATIVE_MAX_ROWS + 1, 32))  # prefill-sized: the eager MLP
    assert fused == [1]
    in_float64 = numerics.linear(numerics.gate_up_silu(x, reference.gate_proj.weight, reference.up_proj.weight),
                                 reference.down_proj.weight)
    numerics.assert_within(got, in_float64, "native")
    numerics.assert_within(reference(x), in_float64, "eager")
    gelu = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=72, num_attention_heads=4, num_key_value_heads=2,
                                hidden_act="gelu"))
    routing.install(gelu)
    with torch.inference_mode(), kernels.engine_kernels("native"):
        gelu(x)
    assert fused == [1]  # only SiLU MLPs are routed


@needs_kernel
def test_an_installed_llama_layer_runs_rotary_natively_without_rebinding_transformers(tiny_target, monkeypatch):
    """The native layer forward embeds positions itself (`native.rotary`, or inside
    `native.layer_qkv`, which rotates query and key): transformers' module-level
    `apply_rotary_pos_emb` stays its own function, installed or not."""
    from transformers.models.llama import modeling_llama

    stock = modeling_llama.apply_rotary_pos_emb
    natives = []
    rotary, layer_qkv = native.rotary, native.layer_qkv
    monkeypatch.setattr(native, "rotary", lambda *a: natives.append(1) or rotary(*a))
    monkeypatch.setattr(native, "layer_qkv", lambda *a: natives.extend((1, 1)) or layer_qkv(*a))
    with routing.install(tiny_target), torch.inference_mode():
        assert modeling_llama.apply_rotary_pos_emb is stock
        tiny_target(torch.tensor([[1, 2, 3]]))
        assert natives == []  # outside the block: transformers' own layer
        with kernels.engine_kernels("native"):
            tiny_target(torch.tensor([[1, 2, 3]]))
    assert len(natives) == 2 * tiny_target.config.num_hidden_layers  # query and key of every layer
    assert modeling_llama.apply_rotary_pos_emb is stock


@needs_kernel
def test_attention_runs_native_inside_the_native_block_where_it_fits(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    natives = []
    attention = native.attention
    monkeypatch.setattr(native, "attention", lambda *a: natives.append(1) or attention(*a))
    module, query, key, value, mask = _attention_inputs(5, 45)
    one_token = query[:, :, :1].contiguous()
    with torch.inference_mode():
        with kernels.engine_kernels("native"):
            got, _ = kernels.engine_attention(module, query, key, value, mask, scaling=0.25)
            single, _ = kernels.engine_attention(module, one_token, key, value, None, scaling=0.25)
            # transformers' boolean causal mask (True: visible) means the same additive mask
            from_bool, _ = kernels.engine_attention(module, query, key, value, mask == 0, scaling=0.25)
            assert natives == [1, 1, 1] and torch.equal(from_bool, got)
            kernels.engine_attention(module, query, key, value, None)  # causal without a mask: SDPA
            kernels.engine_attention(module, query, key, value, mask[:1])  # a mask broadcast over the batch
            kernels.engine_attention(module, query, key, value, mask, dropout=0.1)
            kernels.engine_attention(module, query, key, value, mask, position_bias=torch.zeros(1, 8, 5, 45))
        with kernels.engine_kernels("onednn"):
            kernels.engine_attention(module, query, key, value, mask)
    assert natives == [1, 1, 1]
    for output, queries, visible in ((got, query, mask), (single, one_token, None)):
        in_float64 = numerics.attention(queries, key, value, visible, 0.25)
        expected, _ = sdpa_attention_forward(module, queries, key, value, visible, scaling=0.25)
        numerics.assert_within(output.transpose(1, 2), in_float64, "native")
        numerics.assert_within(expected.transpose(1, 2), in_float64, "SDPA")


@pytest.mark.parametrize("engine_kernel", kernels.ENGINE_KERNELS)
def test_a_masked_forward_of_a_routed_model_matches_the_stock_one(tiny_target, engine_kernel):
    from langchain_seed.engine.forward import causal_row, forward_logits, prefill

    def logits(kernel: str) -> torch.Tensor:
        kv, _ = prefill(tiny_target, list(range(5, 30)))
        kv.concat(prefill(tiny_target, list(range(7, 40)))[0])
        rows = [causal_row([3, 4, 5], 25), causal_row([6, 7, 8, 9], 33)]
        with torch.inference_mode(), kernels.engine_kernels(kernel):
            return forward_logits(tiny_target, kv, rows)

    stock = logits("torch")
    with routing.install(tiny_target):
        routed = logits(engine_kernel)
    # each row against the float64 model on its whole sequence (the cache groups the sums
    # differently, within the same bound); row 0's fourth position is padding, not compared
    for row, (prompt, new) in enumerate([(range(5, 30), [3, 4, 5]), (range(7, 40), [6, 7, 8, 9])]):
        in_float64 = numerics.llama_logits(tiny_target, torch.tensor([[*prompt, *new]]))
        in_float64 = numerics.Approx(*(t[0, -len(new):] for t in in_float64))
        numerics.assert_within(stock[row, :len(new)], in_float64, f"stock, row {row}")
        numerics.assert_within(routed[row, :len(new)], in_float64, f"{engine_kernel}, row {row}")
