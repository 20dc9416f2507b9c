"""`langchain-seed distill`: train a draft model for a target (`langchain_seed.training`)."""

from __future__ import annotations

import argparse
from typing import Any

from langchain_seed.training import command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("distill", help=command.HELP)
    command.add_arguments(parser)
    return parser
