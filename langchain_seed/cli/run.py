"""`langchain-seed run "question"`: Tree-of-Thoughts on the default model pair.

Loads (fetching and caching on first use) the embedded default pair, or the `--target` /
`--draft` pair, builds a `TreeOfThoughts` over `SeedLLM`, and prints the tree, the answer
and the speed. Progress goes to stderr while it works; the result goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from langchain_core.callbacks import BaseCallbackHandler

from langchain_seed.cli.common import (
    decoding_parent,
    load_llm,
    model_parent,
    positive_int,
)
from langchain_seed.tot import TreeOfThoughts

SAMPLE_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


class ProgressPrinter(BaseCallbackHandler):
    """One line per batched LLM call: how many completions went out, how long they took.

    LangChain opens one LLM run per prompt; the runs of one batched call all start before
    any ends, so a batch is the span from the first start to the last end.
    """

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.batches = 0
        self._open = 0
        self._prompts = 0
        self._started = 0.0
        self._rates: list[float] = []

    def on_llm_start(self, serialized, prompts, **kwargs) -> None:
        if self._open == 0:
            self.batches += 1
            self._prompts, self._rates, self._started = 0, [], time.perf_counter()
        self._open += 1
        self._prompts += len(prompts)

    def on_llm_end(self, response, **kwargs) -> None:
        for generations in response.generations:
            for generation in generations:
                rate = (generation.generation_info or {}).get("acceptance_rate")
                if isinstance(rate, (int, float)):
                    self._rates.append(rate)
        self._open -= 1
        if self._open == 0:
            seconds = time.perf_counter() - self._started
            extra = f", mean acceptance {sum(self._rates) / len(self._rates):.2f}" if self._rates else ""
            print(f"  [batch {self.batches}] {self._prompts} completion(s) in {seconds:.1f} s{extra}",
                  file=self.stream, flush=True)

    def on_llm_error(self, error, **kwargs) -> None:
        self._open = max(0, self._open - 1)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("run", parents=[model_parent(), decoding_parent(max_tokens=64)],
                                   help="Tree-of-Thoughts on the default model pair; prints tree, answer, speed.")
    parser.add_argument("question", nargs="?", default=SAMPLE_QUESTION, help="the question (default: a GSM8K sample)")
    tree = parser.add_argument_group("tree of thoughts")
    tree.add_argument("--breadth", type=positive_int, default=3, help="thoughts per state (default 3)")
    tree.add_argument("--depth", type=positive_int, default=2, help="tree depth (default 2)")
    tree.add_argument("--generator", choices=("propose", "sample"), default="sample")
    tree.add_argument("--evaluator", choices=("value", "vote"), default="value")
    tree.add_argument("--search", choices=("bfs", "dfs"), default="bfs")
    parser.add_argument("--json", metavar="PATH", help="also write the tree and statistics as JSON")
    parser.set_defaults(func=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise SystemExit("the question is empty")
    pair = "the default model pair (first use fetches and converts it)" if args.target is None else args.target
    print(f"Loading {pair} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    llm = load_llm(args)
    print(f"Loaded in {time.perf_counter() - started:.1f} s. Building the tree ...", file=sys.stderr, flush=True)
    tot = TreeOfThoughts(llm=llm, task="gsm8k", breadth=args.breadth, depth=args.depth,
                         generator=args.generator, evaluator=args.evaluator, search=args.search)
    result = tot.invoke({"question": args.question}, config={"callbacks": [ProgressPrinter()]}, return_tree=True)
    print(format_report(args.question, result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"question": args.question, "answer": result.answer, "tree": result.tree.to_dict(),
                       "speed": speed_summary(result.stats)}, handle, indent=2)
    return 0


def speed_summary(stats) -> dict[str, float | int | None]:
    """Tokens/s, acceptance and target calls of a ToT run, from SeedLLM's statistics."""
    info, totals = stats.generation_info, stats.llm_output
    new_tokens = info.get("new_tokens") or stats.completion_tokens or 0
    return {
        "llm_batches": stats.llm_batches,
        "completions": stats.llm_calls,
        "new_tokens": new_tokens,
        "llm_seconds": round(stats.llm_seconds, 3),
        "tokens_per_s": round(new_tokens / stats.llm_seconds, 2) if stats.llm_seconds else None,
        "acceptance_rate": round(info["acceptance_rate"], 3) if "acceptance_rate" in info else None,
        "target_calls": totals.get("target_forwards"),
        "draft_calls": totals.get("draft_forwards"),
        "seconds": round(stats.seconds, 3),
    }


def format_report(question: str, result) -> str:
    speed = speed_summary(result.stats)
    lines = [
        "Question: " + question,
        "",
        "Tree (* kept):",
        result.tree.render(),  # ends with the answer line
        "",
        "Speed: {tokens_per_s} tokens/s over {new_tokens} new tokens in {llm_batches} batched calls "
        "({completions} completions); acceptance rate {acceptance_rate}; target calls {target_calls}; "
        "draft calls {draft_calls}; total {seconds} s".format(**speed),
    ]
    return "\n".join(lines)
