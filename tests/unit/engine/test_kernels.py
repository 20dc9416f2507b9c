"""oneDNN linears: same values as torch's, only inside the engine's block, only in its thread."""

from __future__ import annotations

import threading

import pytest
import torch

from langchain_seed.engine import kernels

pytestmark = pytest.mark.skipif(not kernels.onednn_available(), reason="torch built without oneDNN")


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.SiLU(), torch.nn.Linear(48, 300, bias=False))


@pytest.mark.parametrize("rows", [1, 3, 5, 16])
def test_installed_linears_match_torch_inside_the_block(rows):
    model, reference = _mlp(), _mlp()
    assert kernels.install(model) == 2
    x = torch.randn(2, rows, 16)
    with torch.inference_mode():
        expected = reference(x)
        with kernels.onednn_linear():
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_outside_the_block_installed_linears_are_torch_bit_for_bit(monkeypatch):
    model, reference = _mlp(), _mlp()
    kernels.install(model)
    kernels.install(model)  # twice is harmless
    calls = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(kernels.torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: calls.append(1) or original(*a), raising=False)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        assert torch.equal(model(x), reference(x)) and not calls
        with kernels.onednn_linear():
            model(x)
    assert len(calls) == 2


def test_prefill_sized_inputs_stay_on_torch_except_for_heads(monkeypatch):
    calls = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(kernels.torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: calls.append(a[1].shape[0]) or original(*a), raising=False)
    small, head = torch.randn(48, 16), torch.randn(kernels.HEAD_SIZED_OUT_FEATURES, 16)
    rows = kernels.ONEDNN_MAX_ROWS + 1
    with torch.inference_mode(), kernels.onednn_linear():
        kernels.linear(torch.randn(rows, 16), small)
        kernels.linear(torch.randn(1, rows, 16), head)
        kernels.linear(torch.randn(kernels.ONEDNN_MAX_ROWS, 16), small)
    assert calls == [kernels.HEAD_SIZED_OUT_FEATURES, 48]


def test_the_block_is_per_thread_and_nests():
    seen = {}

    def other_thread():
        seen["other"] = getattr(kernels._state, "enabled", False)

    with kernels.onednn_linear():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        with kernels.onednn_linear(False):
            seen["inner"] = kernels._state.enabled
        seen["outer"] = kernels._state.enabled
    assert seen == {"other": False, "inner": False, "outer": True}
    assert not kernels._state.enabled


def test_autograd_and_other_dtypes_fall_back_to_torch():
    model = _mlp()
    kernels.install(model)
    x = torch.randn(4, 16, requires_grad=True)
    with kernels.onednn_linear():
        model(x).sum().backward()  # oneDNN's op has no backward: torch's kernel is used
    assert x.grad is not None and x.grad.shape == (4, 16)
    half = _mlp().to(torch.bfloat16)
    assert kernels.install(half) == 0


def test_engine_rejects_an_unknown_kernel(tiny_target):
    from langchain_seed.engine import SeedEngine

    with pytest.raises(ValueError, match="linear_kernel"):
        SeedEngine(tiny_target, linear_kernel="fast")
