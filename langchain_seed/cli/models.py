"""`langchain-seed models`: fetch, convert and cache the default pair (target + draft)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from langchain_seed.pair.assemble import ensure_default_draft
from langchain_seed.pair.fetch import ensure_default_target
from langchain_seed.pair.paths import (
    ENV_HOME,
    ENV_TARGET,
    cache_dir,
    default_seed_draft_dir,
)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def models_command(args: argparse.Namespace) -> int:
    target = ensure_default_target(source=args.source, progress=args.progress, force=args.force)
    draft = ensure_default_draft(target, progress=args.progress)
    print(f"cache: {cache_dir()}")
    roles = [("target", target), ("draft", draft)]
    seed_draft = default_seed_draft_dir()
    if seed_draft is not None:
        roles.append(("feature draft (the engine's)", seed_draft))
    for role, path in roles:
        print(f"{role}: {path} ({_dir_size(path) / 1e6:.1f} MB)")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models", help="fetch and cache the default model pair (target + draft)",
        description=f"Fetch, convert and cache the default pair. Cache: ${ENV_HOME} or ~/.cache/langchain-seed.")
    parser.add_argument("--source", default=None,
                        help=f"local HF model dir or .gguf (dir) to use instead of downloading (or ${ENV_TARGET})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid copy is cached")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=models_command)
    return parser
