"""The `distill` command's arguments and entry point (the stages run in `pipeline`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from langchain_seed.engine.options import non_negative_int, positive_int
from langchain_seed.training.pipeline import distill

HELP = "train a small draft model for a target by distillation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `distill`'s options to ``parser`` and set its ``func`` to `run`."""
    default_data = Path(__file__).parents[1] / "bench" / "data" / "gsm8k_heldout.jsonl"
    parser.add_argument("--target", required=True, help="target model dir (safetensors)")
    parser.add_argument("--out", required=True, help="output dir for the draft's own weights + card")
    parser.add_argument("--data", default=str(default_data), help="GSM8K-style jsonl (question, answer)")
    parser.add_argument("--kind", choices=("token", "feature"), default="token",
                        help="token: a small LM over tokens; feature: EAGLE-style, also reads the "
                             "target's hidden states (see langchain_seed.training.feature)")
    parser.add_argument("--init-draft", default="",
                        help="start from this trained draft dir (assembled, with head_token_ids.json); "
                             "its head ids are kept")
    parser.add_argument("--feature-weight", type=float, default=1.0,
                        help="feature drafts: weight of the feature regression term")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--soft-weight", type=float, default=1.0)
    parser.add_argument("--prompt-weight", type=float, default=0.2)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=100, help="first N questions are never trained on")
    parser.add_argument("--max-train-questions", type=int, default=0, help="0 = all the rest")
    parser.add_argument("--per-question", type=int, default=1, help="prompts per training question")
    parser.add_argument("--prompt-passes", type=positive_int, default=1,
                        help="passes over the training questions, each with its own prompt draws")
    parser.add_argument("--first-pass", type=non_negative_int, default=0,
                        help="the first pass drawn (fresh prompts for continuing a draft trained on "
                             "passes 0..N-1)")
    parser.add_argument("--chat-fraction", type=float, default=0.25)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--train-max-new-tokens", type=int, default=0,
                        help="new tokens per training prompt (0 = --max-new-tokens, used for held-out)")
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--chain", type=int, default=4, help="draft chain length for the acceptance metric")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="where the target writes its outputs and the draft trains (cpu, cuda, cuda:1, "
                             "mps); the per-token cost is always measured on the CPU")
    parser.add_argument("--work", default="", help="cache dir for target outputs (reused on rerun)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=run, argv_tail=None)


def run(args: argparse.Namespace) -> int:
    """Run `distill` on parsed arguments; the card records the command line
    (``args.argv_tail``: the arguments after ``distill``, else read from ``sys.argv``)."""
    tail = args.argv_tail
    if tail is None:
        tail = sys.argv[sys.argv.index("distill") + 1 :] if "distill" in sys.argv else []
    args.command_line = "langchain-seed distill " + " ".join(shlex.quote(a) for a in tail)
    distill(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`langchain-seed distill ...` on its own; ``argv`` starts with ``distill``."""
    parser = argparse.ArgumentParser(prog="langchain-seed")
    add_arguments(parser.add_subparsers(dest="command", required=True).add_parser("distill", help=HELP))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv_tail = argv[1:]
    return args.func(args)
