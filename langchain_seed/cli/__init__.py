"""The `langchain-seed` command: run, bench, models, distill, serve.

One module per command, each with an `add_parser(subparsers)` that sets `func` on its
parser; `common` holds what they share (the model and decoding parent parsers, built from
`engine/options.py`, and loading the LLM). Command modules import from `common`, never
from each other.
"""

from __future__ import annotations

import argparse

from langchain_seed.cli import bench, distill, models, run, serve

COMMANDS = (run, bench, models, distill, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langchain-seed",
        description="Tree-of-Thoughts on local Hugging Face models with scheduled speculative decoding.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
