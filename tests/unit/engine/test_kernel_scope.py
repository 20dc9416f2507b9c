"""The engine's kernels act only on the model instances it owns, only while it lives:
closing it (or dropping it) leaves every module, transformers' attention registries and its
module-level functions exactly as they were, and other models never see them."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest
import torch

from langchain_seed.engine import SamplingParams, SeedEngine, kernels

from engine_fixtures import build_model, noisy_copy


def _instance_forwards(model: torch.nn.Module) -> dict[str, object]:
    """Each module's instance-level `forward` (None: the class's), by module name."""
    return {name: module.__dict__.get("forward") for name, module in model.named_modules()}


def _transformers_state() -> dict[str, object]:
    """What of transformers the engine could have touched: both attention registries and the
    module-level functions of the modelling files its kernels know."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    state = {"attention": dict(AttentionInterface._global_mapping),
             "masks": dict(AttentionMaskInterface._global_mapping)}
    for module in (modeling_llama, modeling_qwen2):
        for name in ("apply_rotary_pos_emb", "rotate_half", "repeat_kv", "eager_attention_forward"):
            state[f"{module.__name__}.{name}"] = getattr(module, name)
    return state


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("kernel", kernels.ENGINE_KERNELS)
def test_closing_the_engine_leaves_its_models_and_transformers_as_before(arch, kernel):
    target = build_model(arch, seed=11)
    draft = noisy_copy(target, 0.05)
    before = (_instance_forwards(target), _instance_forwards(draft), _transformers_state(),
              target.config._attn_implementation, draft.config._attn_implementation)
    stock = _logits(target)
    engine = SeedEngine(target, draft, linear_kernel=kernel)
    assert sum(f is not None for f in _instance_forwards(target).values()) > 0  # routed while it lives
    assert torch.equal(_logits(target), stock)  # used outside the engine meanwhile: transformers' code
    engine.generate([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=6))
    engine.close()
    engine.close()  # twice is harmless
    after = (_instance_forwards(target), _instance_forwards(draft), _transformers_state(),
             target.config._attn_implementation, draft.config._attn_implementation)
    assert after == before
    assert torch.equal(_logits(target), stock)
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([[1, 2]], SamplingParams(max_tokens=2))


def test_two_engines_on_one_model_share_the_routing_until_both_close():
    target = build_model("llama", seed=12)
    before = _instance_forwards(target)
    first, second = SeedEngine(target), SeedEngine(target)
    first.close()
    assert _instance_forwards(target) != before  # the second engine still uses it
    assert second.generate([[1, 2, 3]], SamplingParams(max_tokens=3))[0].finish_reason == "length"
    second.close()
    assert _instance_forwards(target) == before


def test_an_engine_nobody_holds_is_collected_and_its_kernels_removed():
    target = build_model("llama", seed=13)
    draft = noisy_copy(target, 0.05)
    before = (_instance_forwards(target), _transformers_state(), target.config._attn_implementation)
    engine = SeedEngine(target, draft)
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4))  # its scheduler thread has started
    del engine
    gc.collect()
    assert (_instance_forwards(target), _transformers_state(), target.config._attn_implementation) == before


def test_a_model_loaded_beside_an_engine_computes_what_it_computes_in_a_process_without_one(tmp_path):
    """Bit for bit against a fresh interpreter that never imported the engine."""
    build_model("llama", seed=21).save_pretrained(tmp_path / "model")
    alone = tmp_path / "alone.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}).eval()
        with torch.inference_mode():
            torch.save(model(torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])).logits, {str(alone)!r})
        assert not any(name.startswith("langchain_seed") for name in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    from transformers import AutoModelForCausalLM

    engine = SeedEngine(build_model("llama", seed=22), noisy_copy(build_model("llama", seed=22), 0.05))
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4))
    second = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    during = _logits(second)
    engine.close()
    assert torch.equal(during, torch.load(alone))
    assert torch.equal(_logits(second), torch.load(alone))
