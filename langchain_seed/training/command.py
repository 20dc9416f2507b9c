"""The `distill` command's arguments and entry point (the stages run in `pipeline`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from langchain_seed.engine.options import non_negative_int, positive_int
from langchain_seed.training.broad import distill_broad
from langchain_seed.training.pipeline import distill
from langchain_seed.training.user_prompts import PromptFileError

HELP = "train a small draft model for a target by distillation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `distill`'s options to ``parser`` and set its ``func`` to `run`."""
    default_data = Path(__file__).parents[1] / "bench" / "data" / "gsm8k_heldout.jsonl"
    parser.add_argument("--target", default="", help="target model dir (safetensors); required except "
                        "with --prompts, where it defaults to the default pair's target")
    parser.add_argument("--out", required=True, help="output dir for the draft's own weights + card")
    parser.add_argument("--prompts", default="",
                        help="JSON-lines file of your app's prompts (strings, chat message lists, or "
                             "{\"prompt\": ..., \"family\": ...}): continue the default draft (or --init-draft) on "
                             "the target's answers to them; 1 in 5 per family is held out to measure acceptance")
    parser.add_argument("--mix", action="store_true",
                        help="train on the broad prompt mix (ToT prompts of every task, questions, chat, "
                             "sub-questions, evaluations, creative requests, self-instruct), not GSM8K ToT prompts")
    parser.add_argument("--per-family", type=positive_int, default=400, help="--mix: training prompts per family")
    parser.add_argument("--heldout-per-family", type=positive_int, default=8,
                        help="--mix: held-out prompts per family (acceptance is measured on them)")
    parser.add_argument("--self-instruct", type=non_negative_int, default=100,
                        help="--mix: requests for questions the target answers (each gives up to 5 prompts)")
    parser.add_argument("--sample-temperatures", type=_temperatures, default=(0.7, 1.0),
                        help="--mix/--prompts: also train on answers sampled at these temperatures "
                             "(comma-separated; '' for greedy answers only)")
    parser.add_argument("--samples", type=positive_int, default=1, help="sampled answers per prompt and temperature")
    parser.add_argument("--measure-temperatures", type=_temperatures, default=(0.7, 1.0),
                        help="--mix/--prompts: acceptance is measured greedily and at these temperatures")
    parser.add_argument("--measure-tokens", type=positive_int, default=48,
                        help="--mix/--prompts: new tokens per held-out prompt when measuring acceptance")
    parser.add_argument("--choose-head", action="store_true",
                        help="--mix/--prompts: choose the head (--head-size ids) from the target's answers even "
                             "when continuing a draft (its head is kept otherwise)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=50,
                        help="--mix/--prompts: save the training state every N steps in --work (a rerun resumes)")
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
    if args.prompts or args.mix:
        if args.prompts and args.mix:
            raise SystemExit("distill: --prompts and --mix exclude each other")
        if args.mix and not args.target:
            raise SystemExit("distill --mix: --target is required")
        try:
            distill_broad(args)
        except PromptFileError as error:
            raise SystemExit(f"distill --prompts: {error}") from None
        return 0
    if not args.target:
        raise SystemExit("distill: --target is required (except with --prompts)")
    distill(args)
    return 0


def _temperatures(text: str) -> tuple[float, ...]:
    """argparse type: "0.7,1.0" -> (0.7, 1.0); each in (0, 2]."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from None
        if not 0 < value <= 2:
            raise argparse.ArgumentTypeError(f"a temperature must be in (0, 2]; got {value}")
        values.append(value)
    return tuple(values)


def main(argv: list[str] | None = None) -> int:
    """`langchain-seed distill ...` on its own; ``argv`` starts with ``distill``."""
    parser = argparse.ArgumentParser(prog="langchain-seed")
    add_arguments(parser.add_subparsers(dest="command", required=True).add_parser("distill", help=HELP))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv_tail = argv[1:]
    return args.func(args)
