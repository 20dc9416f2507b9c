"""What the commands share: the parent parsers for model and decoding options, and loading
the LLM they name.

The decoding options are built from `engine/options.py` (type, check, help), so the command
line refuses a bad value with the same message as `SeedLLM` and the engine. Every command
that runs the default pair applies its tuned settings (`pair.paths.DEFAULT_PAIR_OPTIONS`)
the same way, through `decoding_fields`, wherever the command line gives none.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from langchain_seed.engine.models import ACTIVATIONS, DRAFT_ACTIVATIONS, WEIGHTS
from langchain_seed.engine.options import (
    OPTIONS,
    Option,
    non_negative_int,
    positive_int,
)
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.pair.paths import DEFAULT_PAIR_OPTIONS

DTYPES = ("float32", "float16", "bfloat16")
DECODING_OPTIONS = ("decoding", "verify", "k_config", "draft_confidence", "draft_survival", "temperature", "top_p",
                    "max_tokens", "seed")
"""The options the decoding parent parser offers (a command may take a subset)."""

__all__ = ["decoding_fields", "decoding_parent", "load_llm", "model_parent", "non_negative_int", "option_type",
           "positive_int"]


def option_type(option: Option):
    """argparse type of `option`: its command-line text, checked (the option's own message)."""

    def parse(text: str) -> Any:
        try:
            return option.from_text(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = option.name
    return parse


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _default_help(name: str, default: Any) -> str:
    if default is not None:
        return f"default {_text(default)}"
    if name in DEFAULT_PAIR_OPTIONS:
        return (f"default: the default pair's tuned {_text(DEFAULT_PAIR_OPTIONS[name])}, "
                f"else {_text(OPTIONS[name].default)}")
    return f"default {_text(OPTIONS[name].default)}"


def model_parent() -> argparse.ArgumentParser:
    """Parent parser of the model options: which target and draft, in which dtype."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("model")
    group.add_argument("--target", default=None, help="target model dir or hub id (default: the default pair)")
    group.add_argument("--draft", default=None, help="draft model dir or hub id (default: the default pair's)")
    group.add_argument("--dtype", default="float32", choices=DTYPES)
    group.add_argument("--weights", default="auto", choices=WEIGHTS,
                       help="how the target's weights are kept: auto (a GGUF as shipped, in its Q4_1/Q8_0 "
                            "blocks; other models in --dtype), float32 (dense), int8 / int4 (a float model "
                            "quantised on load) (default auto)")
    group.add_argument("--activations", default="float32", choices=ACTIVATIONS,
                       help="how a quantised target's linears take their input: float32 (the exact float32 "
                            "model of its blocks) or int8 (8-bit activations and integer dot products, as "
                            "llama.cpp computes a GGUF; that model is then the target) (default float32)")
    group.add_argument("--draft-activations", default="auto", choices=DRAFT_ACTIVATIONS,
                       help="int8: the draft's layers on Q8_0 weights with 8-bit activations (cheaper draft "
                            "steps; the output is unchanged); auto: so wherever the native kernels run and the "
                            "draft is a float32 decoder on the CPU (default auto)")
    return parser


def decoding_parent(names: Sequence[str] = DECODING_OPTIONS, **defaults: Any) -> argparse.ArgumentParser:
    """Parent parser of the decoding options `names`, from `OPTIONS`. An option left out on the
    command line is None (the model's own, or the default pair's tuned value) unless the
    command gives its own default in `defaults`. A fresh parser per command: argparse shares
    a parent's actions with its children."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("decoding")
    for name in names:
        option, default = OPTIONS[name], defaults.get(name)
        typed: dict[str, Any] = {} if option.choices else {"type": option_type(option)}  # argparse's default: None
        group.add_argument(f"--{name.replace('_', '-')}", **typed,
                           choices=option.choices, default=default, metavar=option.metavar,
                           help=f"{option.help} ({_default_help(name, default)})")
    return parser


def decoding_fields(args: argparse.Namespace, *, default_pair: bool) -> dict[str, Any]:
    """The decoding options given on the command line; on the default pair, its tuned settings
    where none is given."""
    given = {name: getattr(args, name) for name in DECODING_OPTIONS if getattr(args, name, None) is not None}
    return {**DEFAULT_PAIR_OPTIONS, **given} if default_pair else given


def load_llm(args: argparse.Namespace, **fields: Any) -> SeedLLM:
    """The `SeedLLM` of the model and decoding options: the default pair unless `--target` is given."""
    fields = {**decoding_fields(args, default_pair=args.target is None), **fields}
    weights, activations = getattr(args, "weights", "auto"), getattr(args, "activations", "float32")
    draft_activations = getattr(args, "draft_activations", "auto")
    if args.target is None:
        return SeedLLM.from_default(weights=weights, activations=activations, draft_activations=draft_activations,
                                    **fields)
    return SeedLLM.from_pretrained(args.target, args.draft, dtype=args.dtype, weights=weights, activations=activations,
                                   draft_activations=draft_activations, device_map=getattr(args, "device_map", None),
                                   **fields)
