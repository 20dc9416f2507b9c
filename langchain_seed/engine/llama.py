"""The Llama architecture in the engine's own modules: no transformers model class imported.

Importing any transformers model class, even `LlamaConfig`, loads what
`transformers.modeling_utils` needs: `torch.distributed.tensor`, sympy and `torch._dynamo`,
about 90 MB of resident memory in a process whose whole budget on the default pair is
0.5 GB (docs/BENCHMARKS.md, `scripts/memory_floor.py`). A GGUF Llama used as shipped (the
default target) and a layers-only draft on it are built from these modules instead.

They compute what transformers' `LlamaForCausalLM` computes, op for op (tested with
`torch.equal` against it on shared weights, on torch's kernels and on the engine's), and
carry transformers' module names, attributes and class names, so state dicts, the GGUF
name map and the engine's routing (`engine.routing`, `layers`, `decoder`) treat them as
they treat transformers' modules. What transformers' classes add on top (`generate`,
training losses, recorded hidden states, other attention implementations) is not here:
`as_transformers` puts the same modules into transformers' classes where a caller needs
those (the benchmark's transformers baselines).

Covered (`LlamaSettings.from_dict`): model type "llama", SiLU MLPs, default or Llama 3
rotary embeddings over whole heads, no tensor-parallel pretraining split. Any other configuration stays with
transformers' classes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langchain_seed.engine import kernels


@dataclass
class LlamaSettings:
    """A Llama model's configuration: the fields of transformers' `LlamaConfig` these modules read."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_cache: bool = True
    name_or_path: str = ""
    model_type = "llama"

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> LlamaSettings | None:
        """The settings in a transformers config dictionary (`config.json`), or None where it
        asks for something these modules do not compute (another architecture or activation,
        rotary embeddings other than `ROPE_TYPES`, a tensor-parallel split)."""
        max_positions = int(config.get("max_position_embeddings", 2048))
        rope = _rope(config, max_positions)
        if (config.get("model_type") != "llama" or config.get("hidden_act", "silu") != "silu" or rope is None
                or int(config.get("pretraining_tp", 1) or 1) != 1):
            return None
        heads = int(config["num_attention_heads"])
        return cls(
            vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_parameters=rope,
            max_position_embeddings=max_positions,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)), mlp_bias=bool(config.get("mlp_bias", False)),
            bos_token_id=config.get("bos_token_id"), eos_token_id=config.get("eos_token_id"),
            pad_token_id=config.get("pad_token_id"), use_cache=bool(config.get("use_cache", True)),
            name_or_path=str(config.get("_name_or_path") or ""))

    @classmethod
    def from_file(cls, path: str | Path) -> LlamaSettings | None:
        """The settings in a `config.json` (None as in `from_dict`), named by its directory
        (as transformers' `from_pretrained` names a config)."""
        settings = cls.from_dict(json.loads(Path(path).read_text()))
        if settings is not None:
            settings.name_or_path = str(Path(path).parent)
        return settings

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    def to_json_string(self) -> str:
        """The settings as JSON (keys sorted), as transformers' configs give theirs."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The settings as transformers' `LlamaConfig` keyword arguments."""
        fields = asdict(self)
        name = fields.pop("name_or_path")
        return {**fields, "hidden_act": "silu", "model_type": self.model_type, "_name_or_path": name}


ROPE_TYPES = {"default": (), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")}
"""The rotary embeddings these modules compute, and the parameters each reads."""


def _rope(config: dict[str, Any], max_positions: int) -> dict[str, Any] | None:
    """The rotary parameters of a config (either spelling: transformers 5's `rope_parameters`
    or the older `rope_theta` / `rope_scaling`), where they are a kind of `ROPE_TYPES`
    over whole heads; else None. A Llama 3 scaling without its pretraining length takes the
    config's (as transformers does)."""
    parameters = dict(config.get("rope_parameters") or {})
    if not parameters:
        scaling = config.get("rope_scaling") or {}
        parameters = {**scaling, "rope_theta": config.get("rope_theta", 10000.0)}
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind not in ROPE_TYPES or parameters.get("rope_theta") is None \
            or float(parameters.get("partial_rotary_factor", 1.0)) != 1.0:
        return None
    if kind == "llama3":
        parameters["original_max_position_embeddings"] = config.get(
            "original_max_position_embeddings", parameters.get("original_max_position_embeddings", max_positions))
    if any(parameters.get(name) is None for name in ROPE_TYPES[kind]):
        return None
    return {"rope_type": kind, "rope_theta": float(parameters["rope_theta"]),
            **{name: parameters[name] for name in ROPE_TYPES[kind]}}


def default_inverse_frequencies(theta: float, head_dim: int) -> torch.Tensor:
    """`[head_dim / 2]` float32: the plain rotary frequencies `theta ** (-2i / head_dim)`, as
    transformers computes them."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(dtype=torch.float) / head_dim
    return 1.0 / (theta ** exponents)


def _inverse_frequencies(settings: LlamaSettings) -> torch.Tensor:
    """`[head_dim / 2]` float32: the rotary frequencies, as transformers computes them for the
    settings' kind (Llama 3: the long wavelengths divided by `factor`, the middle ones
    interpolated)."""
    parameters = settings.rope_parameters
    inv_freq = default_inverse_frequencies(settings.rope_theta, settings.head_dim)
    if parameters["rope_type"] == "default":
        return inv_freq
    factor, low, high = parameters["factor"], parameters["low_freq_factor"], parameters["high_freq_factor"]
    old_context = parameters["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


Device = torch.device | str | None


def _embedding(settings: LlamaSettings, device: Device) -> nn.Embedding:
    """The token embedding; on the meta device without initialising it (`normal_` on meta
    tensors goes through torch's reference ops, which import `torch._dynamo`)."""
    if device is not None and torch.device(device).type == "meta":
        table = torch.empty(settings.vocab_size, settings.hidden_size, device="meta")
        return nn.Embedding(settings.vocab_size, settings.hidden_size, settings.pad_token_id, _weight=table)
    return nn.Embedding(settings.vocab_size, settings.hidden_size, settings.pad_token_id, device=device)


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, device: Device = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: `[..., hidden]`; the same shape, normalised and scaled (in float32)."""
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LlamaRotaryEmbedding(nn.Module):
    """The rotary embedding (`ROPE_TYPES`): cos and sin tables per position."""

    def __init__(self, settings: LlamaSettings) -> None:
        super().__init__()
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", _inverse_frequencies(settings), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: `[batch, new]`; returns cos and sin, each `[batch, new, head_dim]` in x's dtype."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype=x.dtype), emb.sin().to(dtype=x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """query, key: `[batch, heads, new, head_dim]`; cos, sin: `[batch, new, head_dim]`."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (query * cos) + (_rotate_half(query) * sin), (key * cos) + (_rotate_half(key) * sin)


class LlamaMLP(nn.Module):
    def __init__(self, settings: LlamaSettings, device: Device = None) -> None:
        super().__init__()
        hidden, inner, bias = settings.hidden_size, settings.intermediate_size, settings.mlp_bias
        self.gate_proj = nn.Linear(hidden, inner, bias=bias, device=device)
        self.up_proj = nn.Linear(hidden, inner, bias=bias, device=device)
        self.down_proj = nn.Linear(inner, hidden, bias=bias, device=device)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttention(nn.Module):
    """Grouped-query attention through `kernels.engine_attention`: transformers' "sdpa"
    function outside `engine_kernels()`, the engine's kernels inside."""

    def __init__(self, settings: LlamaSettings, layer_idx: int, device: Device = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = settings.head_dim
        self.num_key_value_groups = settings.num_attention_heads // settings.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        hidden, bias = settings.hidden_size, settings.attention_bias
        heads, kv_heads = settings.num_attention_heads, settings.num_key_value_heads
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=bias, device=device)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=bias, device=device)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=bias, device=device)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=bias, device=device)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, cache=None, **kwargs) -> tuple[torch.Tensor, None]:
        """hidden_states: `[batch, new, hidden]`; attention_mask: `[batch, 1, new, slots]` or None.
        Returns the output `[batch, new, hidden]` and None."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = _apply_rotary(query, key, *position_embeddings)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        output, _ = kernels.engine_attention(self, query, key, value, attention_mask, dropout=0.0,
                                             scaling=self.scaling, **kwargs)
        return self.o_proj(output.reshape(*input_shape, -1).contiguous()), None


class LlamaDecoderLayer(nn.Module):
    def __init__(self, settings: LlamaSettings, layer_idx: int, device: Device = None) -> None:
        super().__init__()
        self.hidden_size = settings.hidden_size
        self.self_attn = LlamaAttention(settings, layer_idx, device)
        self.mlp = LlamaMLP(settings, device)
        self.input_layernorm = LlamaRMSNorm(settings.hidden_size, settings.rms_norm_eps, device)
        self.post_attention_layernorm = LlamaRMSNorm(settings.hidden_size, settings.rms_norm_eps, device)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, use_cache: bool | None = False,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        """hidden_states: `[batch, new, hidden]`; returns the same shape."""
        if position_embeddings is None:
            raise ValueError("LlamaDecoderLayer needs position_embeddings (cos, sin)")
        residual = hidden_states
        hidden_states, _ = self.self_attn(self.input_layernorm(hidden_states), position_embeddings,
                                          attention_mask=attention_mask, cache=cache, position_ids=position_ids,
                                          use_cache=use_cache, **kwargs)
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


_RECORDING = ("output_hidden_states", "output_attentions", "labels")
"""Requests transformers' classes serve and these modules refuse (`as_transformers`)."""


class LlamaModel(nn.Module):
    """The decoder: token embedding, layers, final norm."""

    def __init__(self, settings: LlamaSettings, device: Device = None) -> None:
        super().__init__()
        self.config = settings
        self.padding_idx = settings.pad_token_id
        self.vocab_size = settings.vocab_size
        self.embed_tokens: nn.Module = _embedding(settings, device)
        self.layers = nn.ModuleList(LlamaDecoderLayer(settings, index, device)
                                    for index in range(settings.num_hidden_layers))
        self.norm = LlamaRMSNorm(settings.hidden_size, settings.rms_norm_eps, device)
        self.rotary_emb = LlamaRotaryEmbedding(settings)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.embed_tokens = module

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, **kwargs):
        """input_ids, position_ids: `[batch, new]`; attention_mask: 4-D `[batch, 1, new, slots]`
        (additive float or bool), 2-D `[batch, slots]` padding, or None (causal). Returns
        transformers' `BaseModelOutputWithPast` (the last hidden state `[batch, new, hidden]`
        after the final norm, and the cache)."""
        from transformers.modeling_outputs import BaseModelOutputWithPast

        _refuse_recording(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache is None:
            use_cache = self.config.use_cache
        if use_cache and cache is None:
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache()
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(hidden_states.shape[1], device=hidden_states.device) + past)[None, :]
        mask = self.causal_mask(hidden_states, attention_mask, cache)
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=position_embeddings,
                                  position_ids=position_ids, cache=cache, use_cache=use_cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)

    def causal_mask(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                    cache) -> torch.Tensor | None:
        """The mask each layer's attention gets, as transformers' `create_causal_mask` gives
        it for "sdpa": a 4-D mask as it is; None where the attention is plainly causal over the
        new tokens (one token, or no earlier ones: the attention's `is_causal`); else a bool
        mask `[batch, 1, new, slots]` (True: visible) of the causal order and the padding.
        hidden_states: `[batch, new, hidden]`."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask
        batch, new = hidden_states.shape[:2]
        if cache is not None:
            past = cache.get_query_offset(0)
            slots, slot_offset = cache.get_mask_sizes(new, 0)
        else:
            past, slot_offset = 0, 0
            slots = new if attention_mask is None else attention_mask.shape[-1]
        padding = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape != (batch, slots):
                raise ValueError(f"attention_mask must be 4-D or [batch, slots] = [{batch}, {slots}]; got "
                                 f"{tuple(attention_mask.shape)}")
            padding = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
            if bool(padding.all()):
                padding = None
        if padding is None and (new == 1 or slots == new or past == 0):
            return None
        query_positions = torch.arange(new, device=hidden_states.device) + past
        slot_positions = torch.arange(slots, device=hidden_states.device) + slot_offset
        visible = (slot_positions[None, :] <= query_positions[:, None]).expand(batch, 1, new, slots)
        return visible if padding is None else visible & padding[:, None, None, :]


def _refuse_recording(kwargs: dict[str, Any]) -> None:
    asked = [name for name in _RECORDING if kwargs.get(name) is not None and kwargs.get(name) is not False]
    if kwargs.get("return_dict") is False:
        asked.append("return_dict=False (tuples)")
    if asked:
        raise ValueError(f"the engine's Llama modules do not compute {', '.join(asked)}; use "
                         "engine.llama.as_transformers(model) for transformers' classes on the same weights")


class LlamaForCausalLM(nn.Module):
    """The decoder and its LM head; `forward` gives the logits."""

    def __init__(self, settings: LlamaSettings, device: Device = None) -> None:
        """`device="meta"`: parameters without storage, to be assigned (a loader's)."""
        super().__init__()
        self.config = settings
        self.model = LlamaModel(settings, device)
        self.vocab_size = settings.vocab_size
        self.lm_head: nn.Module = nn.Linear(settings.hidden_size, settings.vocab_size, bias=False, device=device)
        self.generation_config: Any = None

    def get_decoder(self) -> LlamaModel:
        return self.model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, module: nn.Module) -> None:
        self.model.embed_tokens = module

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, module: nn.Module) -> None:
        self.lm_head = module

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0, **kwargs):
        """The decoder (`LlamaModel.forward`), then the LM head on the last `logits_to_keep`
        positions (0: all; a tensor: those indices). Returns transformers'
        `CausalLMOutputWithPast` (logits `[batch, kept, vocab]`, the cache)."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        _refuse_recording(kwargs)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return CausalLMOutputWithPast(logits=self.lm_head(hidden_states[:, kept, :]), cache=outputs.cache)


def is_engine_llama(model: Any) -> bool:
    """Whether `model` is built from this module's classes."""
    return isinstance(model, LlamaForCausalLM)


def as_transformers(model: Any) -> Any:
    """`model` where it is not the engine's own (`is_engine_llama`); else transformers'
    `LlamaForCausalLM` holding the very same modules (linears, embeddings, norms' weights:
    nothing copied), for what only transformers' classes do (`generate`, losses)."""
    if not is_engine_llama(model):
        return model
    from accelerate import init_empty_weights
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as TransformersLlama

    settings = model.config
    config = LlamaConfig(**{key: value for key, value in settings.to_dict().items() if key != "model_type"})
    config._attn_implementation = "sdpa"
    with init_empty_weights():
        twin = TransformersLlama(config)
    for name, module in model.named_modules():
        if isinstance(module, LlamaRMSNorm):
            twin.get_submodule(name).weight = module.weight
        elif not list(module.children()) and not isinstance(module, (LlamaRotaryEmbedding, nn.SiLU)):
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, module)
    if model.generation_config is not None:
        twin.generation_config = model.generation_config
    return twin.to(model.device).eval()
