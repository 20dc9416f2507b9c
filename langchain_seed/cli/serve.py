"""`langchain-seed serve`: the OpenAI-compatible server (`langchain_seed.serving`) over a model pair.

The default pair is served with its tuned draft tree and cut (`pair.paths.DEFAULT_PAIR_OPTIONS`)
unless `--k-config` / `--draft-confidence` are given, like `run` and `bench`. Needs the
`server` extra: `pip install "langchain-seed[server]"`.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from langchain_seed.cli.common import (
    decoding_parent,
    load_llm,
    model_parent,
    positive_int,
)
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.serving import ServerSettings, create_app
from langchain_seed.serving.app import LOOPBACK_HOSTS
from langchain_seed.serving.protocol import API_KEY_ENV

logger = logging.getLogger("langchain_seed.serving")

SERVE_OPTIONS = ("decoding", "verify", "k_config", "draft_confidence", "draft_survival", "temperature", "top_p")
"""Decoding options the server's LLM takes from the command line (a request may override the
sampling ones; `--default-max-tokens` stands for max_tokens)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `serve` on the `langchain-seed` command."""
    parser = subparsers.add_parser(
        "serve", parents=[model_parent(), decoding_parent(SERVE_OPTIONS)],
        help="OpenAI-compatible HTTP server (completions, chat, streaming) over the engine",
        description="Serve a target/draft pair (default: the embedded default pair) at /v1/completions, "
                    "/v1/chat/completions and /v1/models. Needs: pip install 'langchain-seed[server]'.")
    parser.add_argument("--device-map", default=None, help="accelerate device map for the target, e.g. auto")
    parser.add_argument("--model-name", default=None, help="model id clients send (default: the target's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    parser.add_argument("--default-max-tokens", type=positive_int, default=256,
                        help="chat max_tokens when a request gives none (default 256)")
    parser.add_argument("--max-tokens-limit", type=positive_int, default=4096, help="largest max_tokens accepted")
    parser.add_argument("--max-n", type=positive_int, default=16, help="largest n accepted")
    parser.add_argument("--max-prompts", type=positive_int, default=32, help="most prompts per completions request")
    parser.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="largest request body (413 above)")
    parser.add_argument("--log-prompts", action="store_true", help="log prompt and completion text (off by default)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=serve_command)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        model_name=args.model_name, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit, max_n=args.max_n,
        max_prompts=args.max_prompts, default_max_tokens=args.default_max_tokens, log_prompts=args.log_prompts)


def llm_from_args(args: argparse.Namespace) -> SeedLLM:
    """The LLM the server serves: the model and decoding options, the default pair's tuned ones."""
    return load_llm(args, max_tokens=args.default_max_tokens)


def serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # lazy: the optional server extra
    except ModuleNotFoundError as error:
        raise SystemExit(f"`langchain-seed serve` needs the server extra: pip install 'langchain-seed[server]' "
                         f"(missing {error.name})") from None
    settings = settings_from_args(args)
    llm = llm_from_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.host not in LOOPBACK_HOSTS and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", args.host)
    app = create_app(llm, settings)
    print(f"Serving {settings.model_name or llm.model_name!r} at http://{args.host}:{args.port}/v1 (Ctrl-C to stop)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
