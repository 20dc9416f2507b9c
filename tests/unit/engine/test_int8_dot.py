"""8-bit activations (`engine.weights.int8_dot`): the kernel, the model, and every mode
decoding the same tokens as the model's own greedy generation."""

from __future__ import annotations

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig, native
from langchain_seed.engine.routing import engine_forward, needs_engine_forward
from langchain_seed.engine.weights import formats, int8_dot
from langchain_seed.engine.weights.convert import quantize_model, use_int8_activations

from engine_fixtures import build_model, hf_greedy, needs_kernel, noisy_copy

pytestmark = needs_kernel


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
@pytest.mark.parametrize(("out_features", "in_features"), [(24, 64), (19, 96), (64, 576)])
def test_repacking_is_lossless(fmt, out_features, in_features):
    blocks = formats.quantize(torch.randn(out_features, in_features), fmt)
    groups = int8_dot.repack(blocks, fmt, in_features)
    assert torch.equal(int8_dot.unpack_rows(groups, fmt, in_features, torch.arange(out_features)), blocks)
    linear = int8_dot.Int8Linear.from_blocks(blocks, fmt, in_features)
    assert torch.equal(linear.weight, formats.dequantize(blocks, fmt, in_features))


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
@pytest.mark.parametrize(("out_features", "in_features"), [(24, 64), (19, 96), (64, 576)])
@pytest.mark.parametrize("rows", [1, 3, 5, 13])
def test_kernel_equals_its_reference_and_each_row_is_its_own(fmt, out_features, in_features, rows):
    torch.manual_seed(rows)
    blocks = formats.quantize(torch.randn(out_features, in_features), fmt)
    linear = int8_dot.Int8Linear.from_blocks(blocks, fmt, in_features, bias=torch.randn(out_features))
    x = torch.randn(rows, in_features) * 3
    got = linear(x)
    reference = int8_dot.reference_linear(x, linear.groups, fmt, in_features, linear.padded_bias)[:, :out_features]
    assert torch.equal(got, reference)
    assert torch.equal(got, torch.cat([linear(x[r:r + 1]) for r in range(rows)]))
    # llama.cpp's arithmetic is close to the float product on the same weights, not equal
    dense = torch.nn.functional.linear(x, linear.weight, linear.bias)
    assert 0 < (got - dense).abs().max() and ((got - dense).abs() <= _rounding_bound(linear, x)).all()


def _rounding_bound(linear, x: torch.Tensor) -> torch.Tensor:
    """How far 8-bit activations can move each output `[rows, out]` from the float product
    on the same weights. A block's scale d = max|x| / 127 is kept in fp16 (relative error
    2^-11), so each value's error is at most d / 2 from rounding plus 127 d 2^-11 from the
    stored scale; Q4_1's minimum m multiplies an fp16 sum of up to 32 x 127 values scaled
    by d (relative error 2^-10 with the scale's). Float sums add 1e-5 of the magnitude."""
    values, scale, *minimum = int8_dot.weight_values(linear.groups, linear.fmt, linear.in_features)
    out, blocks = linear.out_features, linear.in_features // 32
    d = int8_dot.quantize_activations(x)[1] * (1 + 2 ** -10)  # the fp16 scale's bound on the exact one
    magnitude = values.abs().float().view(-1, blocks, 32) * scale[..., None]
    if minimum:
        magnitude = magnitude + minimum[0].abs()[..., None]
    per_value = d * (0.5 + 127 * 2 ** -11)
    bound = torch.einsum("rb,ob->ro", per_value, magnitude.sum(-1))
    if minimum:
        bound = bound + torch.einsum("rb,ob->ro", d * 32 * 127 * 2 ** -10, minimum[0].abs())
    floats = 1e-5 * (x.abs() @ magnitude.flatten(1).t())
    return (bound + floats)[:, :out]


def test_activations_are_quantised_as_the_reference_does():
    x = torch.randn(7, 96) * torch.logspace(-3, 2, 96)
    x[2] = 0  # an all-zero block has scale 0 and values 0
    values, scales, sums = native.quantize_activations(x)
    expected = int8_dot.quantize_activations(x)
    assert torch.equal(values.int(), expected[0]) and torch.equal(scales, expected[1]) and torch.equal(sums, expected[2])
    assert values.abs().max() <= 127 and not scales[2].any()


def test_bad_repacked_weights_are_refused():
    with pytest.raises(ValueError, match="repacked q4_1 weight must be uint8"):
        int8_dot.Int8Linear(torch.zeros(3, 160, dtype=torch.uint8), "q4_1", 64, 24)
    linear = int8_dot.Int8Linear.from_blocks(formats.quantize(torch.randn(8, 64), "q8_0"), "q8_0", 64)
    with pytest.raises(ValueError, match="input has 32 features, expected 64"):
        linear(torch.randn(2, 32))


def int8_model(seed: int, weights: str = "int4"):
    model = build_model("llama", seed=seed)
    quantize_model(model, weights)
    use_int8_activations(model)
    return model


def test_a_model_with_int8_activations_is_computed_by_the_engine_kernels():
    model = int8_model(11)
    assert needs_engine_forward(model) and not needs_engine_forward(build_model("llama"))
    assert all(type(m).__name__ != "QuantizedLinear" for m in model.modules())


PROMPTS = [[(5 * i + k) % 60 + 1 for i in range(n)] for k, n in ((1, 3), (2, 9), (3, 40), (4, 150))]


@pytest.mark.parametrize("weights", ["int4", "int8"])
@pytest.mark.parametrize(("mode", "k_config", "verify"), [
    ("autoregressive", (1,), "batched"), ("speculative", (1, 1, 1), "batched"), ("speculative", (2, 2, 1), "batched"),
    ("scheduled", (1, 1, 1), "batched"), ("scheduled", (2, 1), "batched"), ("scheduled", (1, 1, 1), "rounds")])
def test_every_mode_decodes_the_int8_models_greedy_output(weights, mode, k_config, verify):
    target = int8_model(12, weights)
    draft = noisy_copy(build_model("llama", seed=12), 0.05)
    with engine_forward(target):
        reference = [hf_greedy(target, prompt, 24) for prompt in PROMPTS]
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=k_config, verify=verify))
    try:
        results = engine.generate(PROMPTS, SamplingParams(max_tokens=24), mode=mode)
        again = [engine.generate([p], SamplingParams(max_tokens=24), mode=mode)[0] for p in PROMPTS]
    finally:
        engine.close()
    assert [r.token_ids for r in results] == reference
    assert [r.token_ids for r in again] == reference


def test_an_int8_drafts_head_in_blocks_is_its_own_rows_with_no_float_copy_and_decodes_the_targets_output():
    """The default draft's head is the target's Q8_0 embedding: its 8-bit head takes the
    head rows' own blocks (no float32 rows dequantised and quantised again, none kept), the
    same groups as that route gives, and the engine still decodes the target's output."""
    from langchain_seed.engine.drafters.model import ModelDrafter
    from langchain_seed.engine.weights.convert import int8_draft_layers

    target = build_model("llama", seed=16)
    draft = noisy_copy(build_model("llama", seed=16), 0.05)
    quantize_model(draft, "int8")  # embedding, head and layers in Q8_0 blocks
    int8_draft_layers(draft)  # the layers take 8-bit activations; the head stays in blocks
    head, ids = draft.lm_head, sorted({3, 9, 17, 40, 41, 2})
    _assert_head_is_its_rows_blocks(ModelDrafter(draft, head_token_ids=ids), head.blocks.index_select(0, torch.tensor(ids)),
                                    head.in_features)
    _assert_decodes_the_targets_output(target, draft)


def test_an_int8_drafts_repacked_head_gives_its_rows_own_blocks_with_no_float_copy():
    """With 8-bit activations in the target too, the draft's head is the target's `Int8Linear`
    (its blocks repacked): the 8-bit head takes those rows' blocks back out of the groups
    (no 19 MB of float32 rows for the default draft's 8,192, none kept), the groups the
    requantising route gave, the whole head itself when unrestricted, and the engine still
    decodes the target's output."""
    from langchain_seed.engine.drafters.model import ModelDrafter

    target = build_model("llama", seed=17)
    quantize_model(target, "int8")
    use_int8_activations(target)
    draft = noisy_copy(build_model("llama", seed=17), 0.05)
    quantize_model(draft, "int8")
    blocks = draft.lm_head.blocks.clone()
    use_int8_activations(draft)  # layers, head (and its tied embedding) on 8-bit activations
    head, ids = draft.lm_head, sorted({3, 9, 17, 40, 41, 2})
    assert isinstance(head, int8_dot.Int8Linear)
    _assert_head_is_its_rows_blocks(ModelDrafter(draft, head_token_ids=ids), blocks.index_select(0, torch.tensor(ids)),
                                    head.in_features)
    assert ModelDrafter(draft).int8_head is head
    _assert_decodes_the_targets_output(target, draft)


def _assert_head_is_its_rows_blocks(drafter, rows: torch.Tensor, in_features: int) -> None:
    """The drafter's 8-bit head is the Q8_0 blocks `rows` repacked (no float32 rows kept):
    the groups that dequantising and quantising them again also gives."""
    assert drafter.head_weight is None
    assert torch.equal(drafter.int8_head.groups, int8_dot.repack(rows, "q8_0", in_features))
    requantized = formats.quantize(formats.dequantize(rows, "q8_0", in_features), "q8_0")
    assert torch.equal(drafter.int8_head.groups, int8_dot.repack(requantized, "q8_0", in_features))


def _assert_decodes_the_targets_output(target, draft) -> None:
    reference = [hf_greedy(target, prompt, 16) for prompt in PROMPTS]
    engine = SeedEngine(target, draft, config=SpeculativeConfig(k_config=(2, 1)), draft_head_token_ids=list(range(60)))
    try:
        results = engine.generate(PROMPTS, SamplingParams(max_tokens=16), mode="scheduled")
    finally:
        engine.close()
    assert [r.token_ids for r in results] == reference


def _last_logits(model, ids: list[int], split: int | None = None, pad_before: int = 0) -> torch.Tensor:
    """The model's logits after `ids`: in one forward, or prefilled up to `split` and then
    fed the rest over the cache, or left-padded by `pad_before` slots in a batch of two."""
    from transformers import DynamicCache

    with torch.inference_mode():
        if split is not None:
            cache = DynamicCache()
            model(input_ids=torch.tensor([ids[:split]]), cache=cache, use_cache=True)
            return model(input_ids=torch.tensor([ids[split:]]), cache=cache, use_cache=True).logits[0, -1]
        if pad_before:
            width = len(ids) + pad_before
            other = [(3 * i) % 60 + 1 for i in range(width)]
            input_ids = torch.tensor([[0] * pad_before + ids, other])
            mask = torch.tensor([[0] * pad_before + [1] * len(ids), [1] * width])
            return model(input_ids=input_ids, attention_mask=mask).logits[0, -1]
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_a_tokens_logits_do_not_depend_on_the_batch_or_the_split(weights):
    """What identity in every mode rests on: under the engine's kernels a token's logits are
    the same bits whether its prompt came in one forward, over a cache in pieces, or padded
    in a batch with another (8-bit activations turn any float difference into a different
    rounding, so nearly equal is not enough)."""
    model = int8_model(13, weights)
    ids = PROMPTS[3]
    with engine_forward(model):
        whole = _last_logits(model, ids)
        assert torch.equal(_last_logits(model, ids, split=len(ids) - 5), whole)
        assert torch.equal(_last_logits(model, ids, split=1), whole)
        assert torch.equal(_last_logits(model, ids, pad_before=7), whole)


_PATHS_SCRIPT = """
import hashlib, torch
from langchain_seed.engine import native
from langchain_seed.engine.weights import formats, int8_dot
torch.manual_seed(5)
for fmt in ("q4_1", "q8_0"):
    # 5 groups of outputs (two pairs and one alone on the 512-bit path), 11 rows (a tile and 3)
    linear = int8_dot.Int8Linear.from_blocks(formats.quantize(torch.randn(40, 96), fmt), fmt, 96,
                                             bias=torch.randn(40))
    up = int8_dot.Int8Linear.from_blocks(formats.quantize(torch.randn(40, 96), fmt), fmt, 96)
    x = torch.randn(11, 96) * 4
    for out in (linear(x), native.int8_gate_up_silu(x, linear.groups, up.groups, fmt)):
        print(hashlib.sha256(out.numpy().tobytes()).hexdigest())
"""


def test_the_avx2_and_vnni_paths_give_the_same_bits():
    """VNNI's dpbusd on 512 or 256 bits and AVX2's maddubs + madd sum the same integers, and
    each output's float steps are the same (the kernel picks the widest the CPU has;
    LANGCHAIN_SEED_INT8_PATH=avx2 or vnni256 narrows it), so a model computes alike on any
    machine. Where the CPU lacks VNNI the paths coincide and this checks nothing more."""
    import os
    import subprocess
    import sys

    def run(path: str) -> str:
        env = {**os.environ, "LANGCHAIN_SEED_INT8_PATH": path}
        return subprocess.run([sys.executable, "-c", _PATHS_SCRIPT], env=env, capture_output=True, text=True,
                              check=True, timeout=300).stdout

    widest = run("")
    assert len(widest.split()) == 4 and run("avx2") == widest and run("vnni256") == widest


def test_int8_activations_are_refused_without_the_native_kernels(monkeypatch):
    from langchain_seed.engine import models

    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C compiler")
    with pytest.raises(ValueError, match="activations='int8' needs the engine's native kernels.*no C compiler"):
        models.load_model("anything", activations="int8")
    with pytest.raises(ValueError, match="activations must be one of"):
        models.load_model("anything", activations="int4")


def test_auto_draft_activations_take_int8_where_they_can(monkeypatch):
    """The default ("auto"): 8-bit activations for a float32 decoder draft on the CPU while the
    native kernels run; float32 without the kernels, for another dtype, or a draft without
    decoder layers (a feature draft). "int8" and "float32" are taken as given."""
    from langchain_seed.engine.models import draft_takes_int8

    draft = build_model("llama", seed=15)
    assert draft_takes_int8("auto", draft) and draft_takes_int8("int8", draft)
    assert not draft_takes_int8("float32", draft)
    assert not draft_takes_int8("auto", build_model("llama", seed=15).to(torch.bfloat16))
    assert not draft_takes_int8("auto", torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="draft_activations must be one of"):
        draft_takes_int8("int4", draft)
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C compiler")
    assert not draft_takes_int8("auto", draft)
    with pytest.raises(ValueError, match="needs the engine's native kernels.*no C compiler"):
        draft_takes_int8("int8", draft)


@pytest.mark.parametrize("fmt", ["q4_1", "q8_0"])
def test_query_key_value_in_one_call_equal_three_calls(fmt):
    torch.manual_seed(9)
    linears = [int8_dot.Int8Linear.from_blocks(formats.quantize(torch.randn(n, 64), fmt), fmt, 64) for n in (32, 16, 16)]
    x = torch.randn(2, 5, 64)
    fused = native.int8_linear3(x, *(linear.groups for linear in linears), fmt)
    assert all(torch.equal(got, linear(x)) for got, linear in zip(fused, linears, strict=True))


def test_a_tied_embedding_shares_the_repacked_head():
    from langchain_seed.engine.weights.int8_dot import Int8Embedding

    model = build_model("llama", seed=14)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as the default target is
    quantize_model(model, "int8")
    embedding_rows = model.model.embed_tokens.weight.clone()
    use_int8_activations(model)
    embedding, head = model.model.embed_tokens, model.lm_head
    assert isinstance(embedding, Int8Embedding) and isinstance(head, int8_dot.Int8Linear)
    assert embedding.groups.data_ptr() == head.groups.data_ptr()  # one table, not two
    assert torch.equal(embedding(torch.tensor([3, 7])), embedding_rows[[3, 7]])
