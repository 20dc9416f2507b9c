"""The `langchain-seed` command: run, bench, models, distill.

Each subcommand lives in the module that does its job and registers itself through an
`add_parser(subparsers)` function that sets `func` on its parser; this file only wires
them together. Heavy imports (torch, transformers) happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_SUBCOMMAND_MODULES = (
    "langchain_seed.runner",  # run
    "langchain_seed.bench.cli",  # bench
    "langchain_seed.defaults",  # models
    "langchain_seed.distill",  # distill
    "langchain_seed.server",  # serve
)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _int_at_least(text, 1, "a positive int")


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int_at_least(text, 0, "an int >= 0")


def _int_at_least(text: str, lowest: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be {what}; got {value}")
    return value


def parse_k_config(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive ints, the draft tree per depth."""
    message = f"must be comma-separated positive ints such as 1,1,1,1; got {text!r}"
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(message)
    return values


DRAFT_CONFIDENCE_HELP = ("adaptive draft length: stop drafting deeper where the draft's top probability "
                         "falls below this; 0 drafts the whole tree")


def draft_confidence(text: str) -> float:
    """argparse type: a number in [0, 1), the adaptive draft length's threshold."""
    from langchain_seed.engine.config import check_draft_confidence

    try:
        return check_draft_confidence(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langchain-seed",
        description="Tree-of-Thoughts on local Hugging Face models with scheduled speculative decoding.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
