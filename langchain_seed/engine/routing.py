"""The engine's kernels installed on the engine's own model instances, and removed again.

`install(model)` gives every eligible `nn.Linear`, Llama-family RMS norm, SiLU MLP,
decoder layer and decoder of that one model an instance-level `forward` (the routed
forwards of `engine.kernels`, `engine.layers` and `engine.decoder`), and points the model's "sdpa" attention at
`kernels.engine_attention`, registered in transformers' `AttentionInterface` under its own
name. `KernelRouting.remove()` puts back exactly what was there. Nothing module-level of
torch or transformers is rebound. The engine's own Llama modules (`engine.llama`) carry
transformers' class names, so the same forwards are routed onto them; their attention
takes `engine_attention` inside `engine_kernels()` by itself (they have no "sdpa" config
to point, and nothing is registered for them).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from langchain_seed.engine import decoder, layers
from langchain_seed.engine.kernels import (
    RMS_NORM_CLASSES,
    eligible_weight,
    engine_attention,
    engine_kernels,
    is_silu_mlp,
    linear_forward,
    mlp_forward,
    rms_norm_forward,
)

ATTENTION_IMPLEMENTATION = "langchain_seed"
"""The name `engine_attention` is registered under in transformers' `AttentionInterface`
while an engine's models use it (their "sdpa" configs point at it until the routing is removed)."""


class KernelRouting:
    """The engine's kernels installed on one model instance; `remove()` puts back exactly
    what was there (also a context manager).

    Routed: every eligible `nn.Linear` (through `linear`), Llama-family RMS norms, SiLU MLPs,
    decoder layers (`engine.layers`) and decoders (`engine.decoder`), each by an instance-level `forward` on that module
    only, and the model's "sdpa" attention by pointing its config at
    `ATTENTION_IMPLEMENTATION`. Nothing module-level of torch or transformers is rebound, and
    every routed forward acts only inside `engine_kernels()` in the calling thread: elsewhere
    it calls the forward it replaced.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.linears = 0
        self._forwards: list[tuple[torch.nn.Module, Callable | None]] = []
        self._configs: list[Any] = []
        self._users = 0

    def remove(self) -> None:
        """Undo the routing once its last user (`install` call) has removed it."""
        self._users -= 1
        if self._users > 0:
            return
        for module, previous in reversed(self._forwards):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        for config in self._configs:
            config._attn_implementation_internal = "sdpa"
        self._forwards, self._configs = [], []
        _routings.pop(self.model, None)
        if not _routings:
            _unregister_attention()

    def __enter__(self) -> KernelRouting:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _route(self, module: torch.nn.Module, forward: Callable) -> None:
        self._forwards.append((module, module.__dict__.get("forward")))
        module.forward = forward


_routings: weakref.WeakKeyDictionary[torch.nn.Module, KernelRouting] = weakref.WeakKeyDictionary()
"""The routing of every model with the engine's kernels installed (one per model, shared by
the engines on it)."""


@contextlib.contextmanager
def engine_forward(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, in this thread, `model`'s own forward (transformers' `generate`,
    say) runs on the engine's native kernels, exactly as the engine computes it. A model
    computed alike at every size (`needs_engine_forward`: weights in blocks or 8-bit
    activations) is defined by those kernels: run its transformers baselines and
    references here."""
    routing = install(model)
    try:
        with engine_kernels("native"):
            yield
    finally:
        routing.remove()


def needs_engine_forward(model: torch.nn.Module) -> bool:
    """Whether any of `model`'s modules computes every row the same way at any batch size
    (`batch_invariant`: the linears kept in blocks and the 8-bit-activation linears), so
    that the engine's kernels define the model (`engine_forward`)."""
    return any(getattr(module, "batch_invariant", False) for module in model.modules())


def install(model: torch.nn.Module) -> KernelRouting:
    """Route the model's linears, RMS norms, SiLU MLPs, decoder layers and attention to the
    engine's kernels (see `KernelRouting`); `.linears` says how many linears were routed.

    Installing on a model that already has the routing returns the same routing (each
    install is undone by one `remove()`). A model that is not float32 on the CPU gets
    nothing routed but its attention.
    """
    routing = _routings.get(model)
    if routing is None:
        routing = _routings[model] = KernelRouting(model)
        _route_modules(routing, model)
        _route_attention(routing, model)
    routing._users += 1
    return routing


def _route_modules(routing: KernelRouting, model: torch.nn.Module) -> None:
    for module in model.modules():
        if type(module) is torch.nn.Linear and eligible_weight(module.weight):
            routing._route(module, functools.partial(linear_forward, module))
            routing.linears += 1
        elif type(module).__name__ in RMS_NORM_CLASSES:
            routing._route(module, functools.partial(rms_norm_forward, module, module.forward))
        elif is_silu_mlp(module):
            routing._route(module, functools.partial(mlp_forward, module, module.forward))
        elif layers.supports(module):
            layers.forget(module)
            routing._route(module, functools.partial(layers.native_layer_forward, module, module.forward))
        elif decoder.supports(module):
            decoder.forget(module)
            routing._route(module, functools.partial(decoder.native_decoder_forward, module, module.forward))


def _route_attention(routing: KernelRouting, model: torch.nn.Module) -> None:
    """Point the model's "sdpa" configs at `engine_attention` (registered under
    `ATTENTION_IMPLEMENTATION`); models on other attention keep theirs."""
    configs: dict[int, Any] = {id(m.config): m.config for m in model.modules()
                               if hasattr(getattr(m, "config", None), "_attn_implementation")}
    sdpa = [config for config in configs.values() if getattr(config, "_attn_implementation_internal", None) == "sdpa"]
    if not sdpa or not _register_attention():
        return
    for config in sdpa:
        config._attn_implementation_internal = ATTENTION_IMPLEMENTATION
    routing._configs = sdpa


_registered: set[str] = set()
"""The names this module has registered in transformers' interfaces (and not yet taken out)."""


def _register_attention() -> bool:
    """Register `engine_attention` (and sdpa's mask function) under `ATTENTION_IMPLEMENTATION`
    in transformers' interfaces; False when this transformers has none."""
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(ATTENTION_IMPLEMENTATION, engine_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)
    _registered.add(ATTENTION_IMPLEMENTATION)
    return True


def _unregister_attention() -> None:
    """Take `ATTENTION_IMPLEMENTATION` out of transformers' interfaces again (once no model
    uses it), so the registries are as they were before any engine."""
    if ATTENTION_IMPLEMENTATION not in _registered:  # never registered: nothing to import or undo
        return
    _registered.discard(ATTENTION_IMPLEMENTATION)
    try:
        from transformers.masking_utils import AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        return
    for interface in (AttentionInterface, AttentionMaskInterface):
        interface._global_mapping.pop(ATTENTION_IMPLEMENTATION, None)
