"""Load a target (and optional draft) and check that they can work together.

Loading goes through transformers `from_pretrained` with accelerate's `device_map`.
Safe defaults: safetensors only (pickled `.bin` weights are refused unless the caller
opts in with `allow_pickle=True`) and `trust_remote_code=False` unless asked.

Weights (`weights=`, `WEIGHTS`): a GGUF file (or a directory holding one and no
safetensors) is used as shipped by default, its Q4_1/Q8_0 tensors kept in blocks
(`engine.weights.gguf`); ``"float32"`` dequantises it instead. A float model can be
quantised on load with ``"int8"`` (Q8_0 blocks) or ``"int4"`` (Q4_1 blocks); the quantised
model is then the target every mode reproduces. With ``activations="int8"`` a quantised
target's linears also quantise their input to 8 bits per block of 32 and multiply with
integer dot products, as llama.cpp does (`engine.weights.int8_dot`); that model is then the
target. A layers-only draft directory (its
``draft_layers.safetensors`` without an embedding) is built on the target's embedding and
shares its memory (`load_draft`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS = ("auto", "float32", "int8", "int4")
"""How a model's weights are kept: "auto" (a GGUF as shipped, in blocks; any other model in
`dtype`), "float32" (dense; a GGUF is dequantised), "int8" / "int4" (a float model quantised
into Q8_0 / Q4_1 blocks, `engine.weights.convert`)."""
ACTIVATIONS = ("float32", "int8")
"""How a quantised model's linears take their input: "float32" (the dequantised model,
exactly) or "int8" (8-bit activations and integer dot products, llama.cpp's arithmetic)."""
DRAFT_ACTIVATIONS = ("auto", *ACTIVATIONS)
"""How the draft's layers take their input: "float32", "int8" (Q8_0 weights, 8-bit
activations: cheaper draft steps), or "auto" (the default): "int8" where the engine's native
kernels run and the draft is a float32 decoder on the CPU, else "float32". A draft's
arithmetic never changes the output, only how often the target agrees and what a step costs."""
DRAFT_LAYERS_FILE = "draft_layers.safetensors"
"""A layers-only draft's weights: every tensor but the embedding, which is the target's."""


@dataclass
class LoadedModels:
    """A loaded target, its optional draft, and the target's tokenizer."""

    target: Any
    draft: Any | None
    tokenizer: Any


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    role: str = "model",
    weights: str = "auto",
    activations: str = "float32",
):
    """A causal LM from a local directory, GGUF file or hub id, in eval mode, its weights
    kept as `weights` says (`WEIGHTS`) and its quantised linears taking `activations`
    (`ACTIVATIONS`); `role` names it in errors."""
    _check_activations(activations, "activations", role)
    model = _load_model(name_or_path, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                        allow_pickle=allow_pickle, role=role, weights=weights)
    if activations == "int8":
        from langchain_seed.engine.weights.convert import is_quantized_model, use_int8_activations

        if not is_quantized_model(model):
            raise ValueError(f"{role}: activations='int8' needs weights in blocks (a GGUF as shipped, or "
                             f"weights='int8' / 'int4'); got weights={weights!r}")
        use_int8_activations(model)
    return model


def draft_takes_int8(draft_activations: str, draft_model) -> bool:
    """Whether `draft_model`'s layers get 8-bit activations for `draft_activations`
    (`DRAFT_ACTIVATIONS`): "int8" (checked: it needs the native kernels), "auto" where they
    run here and the draft is a float32 decoder with `.layers` on the CPU."""
    from langchain_seed.engine import native

    if draft_activations not in DRAFT_ACTIVATIONS:
        raise ValueError(f"draft_activations must be one of {', '.join(DRAFT_ACTIVATIONS)}; got {draft_activations!r}")
    if draft_activations != "auto":
        _check_activations(draft_activations, "draft_activations", "draft")
        return draft_activations == "int8"
    from langchain_seed.engine.weights.convert import decoder_layers

    layers = decoder_layers(draft_model)
    weights = list(layers.parameters()) if layers is not None else []
    return (native.available() and bool(weights)
            and all(w.device.type == "cpu" and w.dtype is torch.float32 for w in weights))


def _check_activations(activations: str, name: str, role: str) -> None:
    """`activations` (the argument `name`) is one of `ACTIVATIONS`, and 8-bit activations
    have the native kernels: only they compute every row the same way in every mode
    (`kernels.batch_invariant`), so without them the modes could disagree."""
    from langchain_seed.engine import native

    if activations not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {', '.join(ACTIVATIONS)}; got {activations!r}")
    if activations == "int8" and not native.available():
        raise ValueError(f"{role}: activations='int8' needs the engine's native kernels, which cannot run here: "
                         f"{native.unavailable_reason()}")


def _load_model(name_or_path: str | Path, *, dtype, device_map, trust_remote_code: bool, allow_pickle: bool,
                role: str, weights: str):
    """`load_model` before any change of activations."""
    from transformers import AutoModelForCausalLM

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    name_or_path = resolve_model_source(name_or_path, role)
    gguf = find_gguf(name_or_path)
    if gguf is not None:
        return _load_gguf(gguf, weights, dtype, role)
    if weights in ("int8", "int4") and (_dtype(dtype) is not torch.float32 or device_map not in (None, "cpu")):
        raise ValueError(f"weights={weights!r} quantises a float32 model on the CPU; got dtype {dtype}, "
                         f"device_map {device_map}")
    kwargs: dict[str, Any] = {"dtype": _dtype(dtype), "trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except OSError as error:
        if not allow_pickle and "safetensors" in str(error).lower():
            raise OSError(
                f"{name_or_path} has no safetensors weights; langchain-seed refuses pickled weights by "
                f"default because loading them can run code. Pass allow_pickle=True if you trust the source."
            ) from error
        raise
    if weights in ("int8", "int4"):
        from langchain_seed.engine.weights.convert import quantize_model

        quantize_model(model, weights)
    return model.eval()


def find_gguf(name_or_path: str | Path) -> Path | None:
    """The GGUF file `name_or_path` names: the file itself, or the one `.gguf` in a directory
    without safetensors weights (None otherwise)."""
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        raise ValueError(f"{path} holds several GGUF files ({', '.join(f.name for f in files)}); name one")
    return files[0] if files else None


def _load_gguf(gguf: Path, weights: str, dtype: str | torch.dtype, role: str):
    """A GGUF model as shipped ("auto": blocks, in the engine's own Llama modules where they
    cover the architecture) or dequantised ("float32", in transformers' classes)."""
    if weights in ("int8", "int4"):
        raise ValueError(f"{role} {gguf.name} is a GGUF file, used as shipped (weights='auto') or dequantised "
                         f"(weights='float32'); weights={weights!r} quantises float models")
    if _dtype(dtype) is not torch.float32:
        raise ValueError(f"{role} {gguf.name}: a GGUF model computes in float32; got dtype {dtype}")
    from langchain_seed.engine.weights.convert import dequantize_model
    from langchain_seed.engine.weights.gguf import UnsupportedTensorType, load_gguf_model

    try:
        model = load_gguf_model(gguf, implementation="engine" if weights == "auto" else "transformers")
    except UnsupportedTensorType:
        if weights != "float32":
            raise
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(gguf.parent) if (gguf.parent / "config.json").is_file() else None
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config,
                                                    dtype=torch.float32).eval()
    _read_generation_config(model, gguf.parent)
    return dequantize_model(model) if weights == "float32" else model


def _read_generation_config(model, directory: Path) -> None:
    """The generation config beside the model's file; for the engine's own modules, which
    have none of their own, else one made from the model's config (as transformers does)."""
    from transformers import GenerationConfig

    from langchain_seed.engine.llama import is_engine_llama

    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    elif is_engine_llama(model):
        config = model.config
        model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                                   pad_token_id=config.pad_token_id)


FAST_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""`tokenizer_class` values naming transformers' generic tokenizer over `tokenizer.json`,
which is built directly: `AutoTokenizer` would read the model's config for its type, and
that import alone costs ~60 MB (transformers' model configs import `torch.distributed`
and sympy)."""


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """The tokenizer beside a model: its directory's files, or the one in a GGUF file."""
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if _names_fast_tokenizer(path):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)


def _names_fast_tokenizer(directory: Path) -> bool:
    """Whether `directory` holds a `tokenizer.json` and a tokenizer config naming the generic
    fast tokenizer (`FAST_TOKENIZER_CLASSES`)."""
    config = directory / "tokenizer_config.json"
    if not (config.is_file() and (directory / "tokenizer.json").is_file()):
        return False
    try:
        tokenizer_class = json.loads(config.read_text()).get("tokenizer_class")
    except (ValueError, AttributeError):
        return False
    return tokenizer_class in FAST_TOKENIZER_CLASSES


def load_models(
    target: str | Path,
    draft: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    weights: str = "auto",
    activations: str = "float32",
    draft_activations: str = "auto",
) -> LoadedModels:
    """Target, optional draft and the target's tokenizer, checked to share a vocabulary.

    `weights` and `activations` apply to the target (`WEIGHTS`, `ACTIVATIONS`);
    `draft_activations` (`DRAFT_ACTIVATIONS`; "int8" runs the draft's layers on Q8_0 weights
    with 8-bit activations, `convert.int8_draft_layers`: cheaper draft steps, the output
    unchanged; "auto" does so wherever it can).
    A `draft` directory holding a feature draft
    (`engine.feature_draft`) or a layers-only draft (`DRAFT_LAYERS_FILE`) is assembled with
    the target's embedding (and LM head); any other is loaded as a causal LM.
    """
    target = resolve_model_source(target, "target")
    draft = None if draft is None else resolve_model_source(draft, "draft")
    options: dict[str, Any] = dict(dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                                   allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(target, trust_remote_code=trust_remote_code)
    target_model = load_model(target, role="target", weights=weights, activations=activations, **options)
    draft_model = load_draft(draft, target_model, tokenizer, **options) if draft is not None else None
    if draft_model is not None and draft_takes_int8(draft_activations, draft_model):
        from langchain_seed.engine.weights.convert import int8_draft_layers

        int8_draft_layers(draft_model)
    return_freed_memory()
    return LoadedModels(target_model, draft_model, tokenizer)


def return_freed_memory() -> bool:
    """Hand the heap memory that loading freed back to the system (glibc's `malloc_trim`):
    dequantising, quantising and repacking weights leave tens of MB of freed temporaries in
    the allocator's arenas, which otherwise count in the process's resident size for good
    (47 MB on the default pair). Only free memory is released; True where it ran."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(ctypes.c_size_t(0))
    except (OSError, AttributeError):
        return False
    return True


def load_draft(draft: str | Path, target_model, tokenizer=None, **options):
    """A draft for a loaded target: a feature draft directory is assembled with the target
    (same device and dtype); any other is loaded as a causal LM (`load_model` options) and
    checked to share the target's vocabulary."""
    from transformers import AutoTokenizer

    from langchain_seed.engine.feature_draft import FeatureDraftModel, is_feature_draft_dir

    if is_feature_draft_dir(draft):
        weight = next(target_model.parameters())
        return FeatureDraftModel.load(draft, target_model).to(weight.device, weight.dtype)
    if is_layers_draft_dir(draft):
        return load_layers_draft(draft, target_model)
    draft_model = load_model(draft, role="draft", **options)
    draft_tokenizer = AutoTokenizer.from_pretrained(
        str(draft), trust_remote_code=options.get("trust_remote_code", False)
    )
    check_pair(target_model, draft_model, tokenizer, draft_tokenizer)
    return draft_model


def is_layers_draft_dir(path: str | Path) -> bool:
    """Whether `path` is a layers-only draft: a config and `DRAFT_LAYERS_FILE`, no full weights."""
    path = Path(path)
    return ((path / DRAFT_LAYERS_FILE).is_file() and (path / "config.json").is_file()
            and not (path / "model.safetensors").is_file())


def load_layers_draft(draft: str | Path, target_model):
    """A layers-only draft (`is_layers_draft_dir`) on `target_model`'s embedding: its token
    embedding is the target's module and its tied LM head reads the same table (blocks or
    float weight), so the draft adds only its layers to memory. Raises ValueError when the
    sizes do not fit or a weight is missing."""
    from safetensors.torch import load_file

    config = _draft_config(Path(draft), target_model)
    for name in ("hidden_size", "vocab_size"):
        if getattr(config, name) != getattr(target_model.config, name):
            raise ValueError(f"draft {draft} does not fit the target: {name} {getattr(config, name)} vs "
                             f"{getattr(target_model.config, name)}")
    model = _empty_model(config)
    state = {key: value.float() for key, value in load_file(str(Path(draft) / DRAFT_LAYERS_FILE)).items()}
    model.load_state_dict(state, strict=False, assign=True)
    _share_embedding(model, target_model)
    missing = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if missing:
        raise ValueError(f"draft {draft}: {DRAFT_LAYERS_FILE} lacks {', '.join(missing[:5])}")
    model.generation_config = target_model.generation_config
    return model.eval()


def _draft_config(draft: Path, target_model) -> Any:
    """A layers-only draft's config: the engine's own Llama settings where the target is built
    from the engine's modules and they cover the draft; else transformers' config."""
    from langchain_seed.engine.llama import LlamaSettings, is_engine_llama

    settings = LlamaSettings.from_file(draft / "config.json") if is_engine_llama(target_model) else None
    if settings is not None:
        return settings
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(draft)


def _empty_model(config) -> torch.nn.Module:
    """A causal LM for `config` with its parameters on the meta device (to be assigned)."""
    from langchain_seed.engine.llama import LlamaForCausalLM, LlamaSettings

    if isinstance(config, LlamaSettings):
        return LlamaForCausalLM(config, device="meta")
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _share_embedding(draft_model, target_model) -> None:
    """Give the draft the target's embedding module and an LM head on the same table."""
    from langchain_seed.engine.weights.int8_dot import Int8Embedding
    from langchain_seed.engine.weights.modules import QuantizedEmbedding, QuantizedLinear

    embedding = target_model.get_input_embeddings()
    draft_model.set_input_embeddings(embedding)
    if isinstance(embedding, Int8Embedding):
        draft_model.set_output_embeddings(target_model.get_output_embeddings())
    elif isinstance(embedding, QuantizedEmbedding):
        draft_model.set_output_embeddings(QuantizedLinear(embedding.blocks, embedding.fmt, embedding.embedding_dim,
                                                          name="lm_head"))
    else:
        draft_model.get_output_embeddings().weight = embedding.weight


def resolve_model_source(name_or_path: str | Path, role: str = "model") -> str:
    """`name_or_path` as `from_pretrained` takes it: an existing local path, or a Hugging Face
    Hub id that is in the local cache or on the Hub. Otherwise a one-line FileNotFoundError
    (instead of the Hub client's retries and tracebacks); `role` names the model in it."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or _looks_local(text):
        raise FileNotFoundError(
            f"{role} {text!r} does not exist, and it is not a Hugging Face Hub id (those look like 'org/name')"
        )
    _check_hub_id(text, role)
    return text


def _looks_local(text: str) -> bool:
    """Whether `text` is written as a filesystem path rather than a hub id ('org/name')."""
    separators = text.count(os.sep) + (text.count(os.altsep) if os.altsep else 0)
    return os.path.isabs(text) or text.startswith(("./", "../", "~", f".{os.sep}", f"..{os.sep}")) or separators > 1


def _check_hub_id(repo_id: str, role: str) -> None:
    """Refuse a hub id that is neither valid, cached, nor reachable (one request, no retries)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise FileNotFoundError(
            f"{role} {repo_id!r} is not an existing path nor a valid Hugging Face Hub id (those look like 'org/name')"
        ) from error
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"))
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise FileNotFoundError(
            f"{role} {repo_id!r} is not a local path, and the Hugging Face Hub model could not be found in the "
            f"local cache or downloaded ({type(error).__name__}: {reason})"
        ) from error


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {', '.join(table)}; got {dtype!r}")
    return table[dtype]


def check_pair(target_model, draft_model, tokenizer=None, draft_tokenizer=None) -> None:
    """Raise ValueError naming the difference when draft and target cannot share tokens."""
    target_vocab = _vocab_size(target_model)
    draft_vocab = _vocab_size(draft_model)
    if target_vocab != draft_vocab:
        raise ValueError(
            f"draft and target vocabularies differ: the target ({type(target_model).__name__}) has "
            f"{target_vocab} token ids, the draft ({type(draft_model).__name__}) has {draft_vocab}"
        )
    if tokenizer is None or draft_tokenizer is None:
        return
    target_tokens, draft_tokens = tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if target_tokens != draft_tokens:
        differing = sorted(set(target_tokens.items()) ^ set(draft_tokens.items()))[:3]
        raise ValueError(
            f"draft and target tokenizers differ ({len(target_tokens)} vs {len(draft_tokens)} tokens); "
            f"first differences: {differing}"
        )


def _vocab_size(model) -> int:
    head = model.get_output_embeddings()
    return int(getattr(head, "out_features", None) or head.weight.shape[0])


def eos_token_ids(model, tokenizer=None) -> frozenset[int]:
    """Every EOS id the model's generation config or tokenizer names."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for source in (getattr(generation_config, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(t) for t in source)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def context_window(model) -> int | None:
    """The model's maximum number of positions, when its config says."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def supports_tree_mask(model) -> bool:
    """Whether `model` honours a custom 4-D float attention mask (tree attention).

    Runs three tokens twice: causally, and with the third token blind to the second. A
    model that accepts the mask gives a different third output; one that ignores or
    rejects it does not.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = torch.tensor([[1, 2, 3]], device=device)
    positions = torch.arange(3, device=device)[None, :]
    visible = torch.ones(3, 3, dtype=torch.bool).tril()
    visible[2, 1] = False
    mask = torch.zeros(1, 1, 3, 3, dtype=dtype, device=device)
    mask.masked_fill_(~visible.to(device), torch.finfo(dtype).min)
    try:
        with torch.inference_mode():
            plain = model(input_ids=ids, position_ids=positions, cache=DynamicCache(), use_cache=True).logits
            masked = model(input_ids=ids, position_ids=positions, attention_mask=mask, cache=DynamicCache(),
                           use_cache=True).logits
    except Exception:
        return False
    same_prefix = torch.allclose(plain[0, :2], masked[0, :2], atol=1e-4)
    return bool(same_prefix and not torch.allclose(plain[0, 2], masked[0, 2], atol=1e-5))


def read_head_token_ids(draft: str | Path) -> list[int] | None:
    """The draft's restricted LM-head ids from `head_token_ids.json` in its directory, if present."""
    path = Path(draft) / "head_token_ids.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("head_token_ids", data.get("token_ids"))
    if not isinstance(data, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in data):
        raise ValueError(f"{path} must hold a JSON list of token ids")
    return data
