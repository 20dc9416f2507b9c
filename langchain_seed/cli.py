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
