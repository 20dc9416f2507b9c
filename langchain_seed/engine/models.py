"""Load a target (and optional draft) and check that they can work together.

Loading goes through transformers `from_pretrained` with accelerate's `device_map`.
Safe defaults: safetensors only (pickled `.bin` weights are refused unless the caller
opts in with `allow_pickle=True`) and `trust_remote_code=False` unless asked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


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
):
    """A causal LM from a local directory or hub id, in eval mode (`role` names it in errors)."""
    from transformers import AutoModelForCausalLM

    name_or_path = resolve_model_source(name_or_path, role)
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
    return model.eval()


def load_models(
    target: str | Path,
    draft: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> LoadedModels:
    """Target, optional draft and the target's tokenizer, checked to share a vocabulary.

    A `draft` directory holding a feature draft (`engine.feature_draft`) is assembled with
    the target's embedding and LM head; any other is loaded as a causal LM.
    """
    from transformers import AutoTokenizer

    target = resolve_model_source(target, "target")
    draft = None if draft is None else resolve_model_source(draft, "draft")
    options: dict[str, Any] = dict(dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code,
                                   allow_pickle=allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
    target_model = load_model(target, role="target", **options)
    draft_model = load_draft(draft, target_model, tokenizer, **options) if draft is not None else None
    return LoadedModels(target_model, draft_model, tokenizer)


def load_draft(draft: str | Path, target_model, tokenizer=None, **options):
    """A draft for a loaded target: a feature draft directory is assembled with the target
    (same device and dtype); any other is loaded as a causal LM (`load_model` options) and
    checked to share the target's vocabulary."""
    from transformers import AutoTokenizer

    from langchain_seed.engine.feature_draft import FeatureDraftModel, is_feature_draft_dir

    if is_feature_draft_dir(draft):
        weight = next(target_model.parameters())
        return FeatureDraftModel.load(draft, target_model).to(weight.device, weight.dtype)
    draft_model = load_model(draft, role="draft", **options)
    draft_tokenizer = AutoTokenizer.from_pretrained(
        str(draft), trust_remote_code=options.get("trust_remote_code", False)
    )
    check_pair(target_model, draft_model, tokenizer, draft_tokenizer)
    return draft_model


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
    return int(model.get_output_embeddings().weight.shape[0])


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
