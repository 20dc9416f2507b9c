"""The models `langchain-seed bench` runs: the pair its flags name (or the default pair),
loaded once for every method as each method needs it (`load_bench_models`), and what the
benchmark records of them (`model_pair_info`). Shared by the bench and by
`bench_own_process`, which loads one method's models in a process of its own."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from langchain_seed.bench.methods import DRAFT_METHODS, HF_METHODS, SEED_METHODS, BenchModels
from langchain_seed.cli.common import decoding_fields
from langchain_seed.engine.feature_draft import is_feature_draft_dir
from langchain_seed.engine.kernels import effective_kernel
from langchain_seed.engine.llama import as_transformers
from langchain_seed.engine.models import draft_takes_int8, load_draft, load_models, read_head_token_ids
from langchain_seed.engine.options import OPTIONS
from langchain_seed.engine.weights.convert import (
    decoder_layers,
    dequantized_copy,
    has_int8_activations,
    int8_draft_layers,
    is_quantized_model,
)
from langchain_seed.engine.weights.int8_dot import Int8Linear
from langchain_seed.pair.assemble import ensure_default_pair
from langchain_seed.pair.paths import default_seed_draft_dir


def load_bench_models(args: argparse.Namespace):
    """Load the pair named by the flags (or the default pair) onto the device."""
    needs_draft = any(m in DRAFT_METHODS for m in args.methods)
    target, draft, seed_draft = args.target, args.draft, args.seed_draft
    if target is None:
        default_target, default_draft = ensure_default_pair(progress=args.progress)
        target, draft = default_target, draft or default_draft
        seed_draft = seed_draft or default_seed_draft_dir()
    if needs_draft and draft is None:
        raise SystemExit("the methods " + ", ".join(m for m in args.methods if m in DRAFT_METHODS)
                         + " need --draft (or leave out --target to use the default pair)")
    if "hf_assisted_serial" in args.methods and draft is not None and is_feature_draft_dir(draft):
        raise SystemExit(f"--draft {draft} is a feature draft, which transformers' assisted generation cannot "
                         "run: pass a token draft as --draft and the feature draft as --seed-draft")
    # A float32 draft is kept only for transformers' assisted generation; the seed methods'
    # draft takes --draft-activations (its own copy when the assistant runs too), so their
    # memory is what `SeedLLM` would hold.
    assistant = "hf_assisted_serial" in args.methods
    seeds = needs_draft and any(m in SEED_METHODS for m in args.methods)
    own_seed_draft = seeds and seed_draft is not None
    loaded = load_models(target, draft if assistant or (seeds and not own_seed_draft) else None, dtype=args.dtype,
                         weights=args.weights, activations=args.activations,
                         draft_activations="float32" if assistant else args.draft_activations)
    device = torch.device(args.device)
    loaded.target.to(device)
    if loaded.draft is not None:
        loaded.draft.to(device)
    seed_model = load_draft(seed_draft, loaded.target, loaded.tokenizer, dtype=args.dtype).to(device) \
        if own_seed_draft else None
    if seeds and assistant and seed_model is None and draft_takes_int8(args.draft_activations, loaded.draft):
        seed_model = load_draft(draft, loaded.target, loaded.tokenizer, dtype=args.dtype).to(device)
    if seed_model is not None and draft_takes_int8(args.draft_activations, seed_model):
        int8_draft_layers(seed_model)
    hf_target, hf_draft, seed_target, seed_model = _float_baselines(args, loaded, draft, seed_model)
    head_ids = _head_ids(draft) if needs_draft else None
    tree = _seed_tree(args)
    return BenchModels(hf_target, hf_draft, loaded.tokenizer, head_ids, tree["k_config"],
                       str(target), str(draft) if needs_draft else "-", args.linear_kernel,
                       tree["draft_confidence"], seed_model, str(seed_draft or draft) if seed_model is not None
                       else None, seed_target, _weights_name(loaded.target), tree["draft_survival"])


def _float_baselines(args: argparse.Namespace, loaded, draft, seed_model):
    """(target, draft) for the transformers methods and (target, draft) for the seed methods.

    A target kept in blocks (a GGUF as shipped, or `--weights int8/int4`) runs the seed
    methods; the transformers methods get its dequantised float32 copy (the same model in
    torch's own code), built only when one of them is selected. Otherwise all share one:
    with 8-bit activations (`--activations int8`) the target is the model with `Int8Linear`s,
    whose forward is the same in transformers' `generate` as in the engine. A target in the
    engine's own Llama modules (a GGUF as shipped) runs the transformers methods in
    transformers' classes holding the same modules (`llama.as_transformers`)."""
    if not any(m in HF_METHODS for m in args.methods):
        return loaded.target, loaded.draft, None, seed_model
    if not is_quantized_model(loaded.target) or has_int8_activations(loaded.target):
        hf_target = as_transformers(loaded.target)
        if hf_target is loaded.target:
            return loaded.target, loaded.draft, None, seed_model
        return (hf_target, as_transformers(loaded.draft), loaded.target,
                seed_model if seed_model is not None else loaded.draft)
    dense = dequantized_copy(loaded.target)
    assistant = "hf_assisted_serial" in args.methods
    dense_draft = load_draft(draft, dense, loaded.tokenizer) if assistant and loaded.draft is not None else None
    return dense, dense_draft, loaded.target, seed_model if seed_model is not None else loaded.draft


def _weights_name(model) -> str:
    """How the seed methods' target keeps its weights: the block formats it uses, or its dtype."""
    formats = sorted({m.fmt for m in model.modules() if hasattr(m, "fmt") and hasattr(m, "blocks")})
    int8 = sorted({m.fmt for m in model.modules() if isinstance(m, Int8Linear)})
    if int8:
        return "+".join(int8) + " x int8 activations"
    return "+".join(formats) if formats else str(next(model.parameters()).dtype).replace("torch.", "")


def _seed_tree(args: argparse.Namespace) -> dict:
    """The seed methods' k_config, draft_confidence and draft_survival: given, else the default
    pair's tuned ones (on the default pair) or the options' defaults."""
    fields = decoding_fields(args, default_pair=args.target is None)
    names = ("k_config", "draft_confidence", "draft_survival")
    return {name: fields.get(name, OPTIONS[name].default) for name in names}


def _head_ids(draft) -> list[int] | None:
    path = Path(str(draft))
    if not (path / "head_token_ids.json").is_file():
        return None
    return read_head_token_ids(path)


def model_pair_info(models) -> dict[str, Any]:
    def params(model) -> int | None:
        return sum(p.numel() for p in model.parameters()) if model is not None else None

    draft_layers = decoder_layers(models.engine_draft)

    return {
        "target": models.target_name,
        "draft": models.draft_name,
        "seed_draft": models.seed_draft_name or models.draft_name,
        "target_parameters": params(models.target),
        "draft_parameters": params(models.draft),
        "seed_draft_parameters": params(models.engine_draft),
        "draft_head_tokens": len(models.draft_head_token_ids) if models.draft_head_token_ids else None,
        "k_config": list(models.k_config),
        "draft_confidence": models.draft_confidence,
        "draft_survival": models.draft_survival,
        "seed_linear_kernel": effective_kernel(models.linear_kernel),
        "dtype": str(next(models.target.parameters()).dtype).replace("torch.", ""),
        "seed_weights": models.seed_weights,
        "seed_draft_weights": None if draft_layers is None else _weights_name(draft_layers),
        "hf_weights": "float32 (dequantised copy)" if models.seed_target is not None else models.seed_weights,
    }
