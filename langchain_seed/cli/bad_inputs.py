"""Bad inputs, everywhere a user can pass something, tried against a running engine.

Each case must be refused at once with an error that names the problem, and none may
disturb a good request that the same engine is serving meanwhile. `run_cases(llm)`
returns the outcomes; `python -m langchain_seed.cli.bad_inputs` prints them as the
Markdown table of docs/RELIABILITY.md (on a tiny random model: no downloads).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_seed.cli import build_parser
from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig


@dataclass
class Case:
    layer: str
    description: str
    attempt: Callable[[], Any]
    must_mention: str


@dataclass
class Outcome:
    case: Case
    refused: bool
    error_type: str
    message: str
    seconds: float

    @property
    def clear(self) -> bool:
        """Refused with a message that names the problem."""
        return self.refused and self.case.must_mention.lower() in self.message.lower()


def build_cases(llm, other_vocab_draft=None) -> list[Case]:
    """The cases, over a `SeedLLM` (its engine and tokenizer are used too)."""
    from langchain_seed.lc.llms import SeedLLM
    from langchain_seed.tot import TreeOfThoughts

    engine = llm.engine
    window = engine.context_window or 10**6
    new_llm = lambda **fields: SeedLLM.from_engine(engine, **fields)
    cases = [
        Case("SeedLLM field", "temperature=-1", lambda: new_llm(temperature=-1), "temperature"),
        Case("SeedLLM field", "temperature='hot'", lambda: new_llm(temperature="hot"), "temperature"),
        Case("SeedLLM field", "decoding='fast'", lambda: new_llm(decoding="fast"), "decoding"),
        Case("SeedLLM field", "verify='sometimes'", lambda: new_llm(verify="sometimes"), "verify"),
        Case("SeedLLM field", "k_config='1111'", lambda: new_llm(k_config="1111"), "k_config"),
        Case("SeedLLM field", "k_config=(0, 1)", lambda: new_llm(k_config=(0, 1)), "k_config"),
        Case("SeedLLM field", "k_config=(8, 8, 8) (512 nodes)", lambda: new_llm(k_config=(8, 8, 8)), "k_config"),
        Case("SeedLLM field", "max_tokens=0", lambda: new_llm(max_tokens=0), "max_tokens"),
        Case("SeedLLM field", "top_p=2", lambda: new_llm(top_p=2), "top_p"),
        Case("SeedLLM field", "n=0", lambda: new_llm(n=0), "n"),
        Case("SeedLLM field", "seed=-5", lambda: new_llm(seed=-5), "seed"),
        Case("SeedLLM field", "unknown field colour='red'", lambda: new_llm(colour="red"), "colour"),
        Case("per-call kwarg", "invoke(p, foo=1)", lambda: llm.invoke("hi", foo=1), "foo"),
        Case("per-call kwarg", "invoke(p, temperature=float('nan'))",
             lambda: llm.invoke("hi", temperature=float("nan")), "temperature"),
        Case("per-call kwarg", "invoke(p, max_tokens=10**9) (past the context window)",
             lambda: llm.invoke("hi", max_tokens=10**9), "context window"),
        Case("prompt", "empty prompt ''", lambda: llm.invoke(""), "empty"),
        Case("prompt", "bytes b'\\xff\\xfe' (not UTF-8)", lambda: llm.invoke(b"\xff\xfe"), "str"),
        Case("prompt", "lone surrogate '\\udcff'", lambda: llm.invoke("a\udcffb"), "utf-8"),
        Case("prompt", f"prompt of {window + 10} words (past the context window)",
             lambda: llm.invoke("hi " * (window + 10), max_tokens=4), "context window"),
        Case("stop", "stop=[1, 2]", lambda: llm.invoke("hi", stop=[1, 2]), "stop"),
        Case("stop", "stop=['']", lambda: llm.invoke("hi", stop=[""]), "stop"),
        Case("stop", "stop=[['a']]", lambda: llm.invoke("hi", stop=[["a"]]), "stop"),
        # the wrong types below are the point: each case checks the value is refused at run time
        Case("SamplingParams", "stop_token_ids=[-1]",
             lambda: SamplingParams(stop_token_ids=[-1]), "stop_token_ids"),  # type: ignore[arg-type]
        Case("SamplingParams", "max_tokens=2.5",
             lambda: SamplingParams(max_tokens=2.5), "max_tokens"),  # type: ignore[arg-type]
        Case("SpeculativeConfig", "acceptance='yolo'",
             lambda: SpeculativeConfig(acceptance="yolo"), "acceptance"),  # type: ignore[arg-type]
        Case("SpeculativeConfig", "draft_confidence=1.5",
             lambda: SpeculativeConfig(draft_confidence=1.5), "draft_confidence"),
        Case("SpeculativeConfig", "draft_survival=-0.1",
             lambda: SpeculativeConfig(draft_survival=-0.1), "draft_survival"),
        Case("SpeculativeConfig", "prompt_lookup_below=0",
             lambda: SpeculativeConfig(prompt_lookup_below=0), "prompt_lookup_below"),
        Case("SpeculativeConfig", "max_batch_tokens=2 with a 5-token draft",
             lambda: SpeculativeConfig(max_batch_tokens=2), "max_batch_tokens"),
        Case("engine", "token id outside the vocabulary",
             lambda: engine.generate([[1, 10**7]], SamplingParams(max_tokens=2)), "vocabulary"),
        Case("engine", "mode='fast'", lambda: engine.generate([[1]], mode="fast"), "mode"),
        Case("ToT setting", "breadth=0", lambda: TreeOfThoughts(llm=llm, breadth=0), "breadth"),
        Case("ToT setting", "depth=-1", lambda: TreeOfThoughts(llm=llm, depth=-1), "depth"),
        Case("ToT setting", "search='astar'", lambda: TreeOfThoughts(llm=llm, search="astar"), "search"),
        Case("ToT setting", "task='chess'", lambda: TreeOfThoughts(llm=llm, task="chess"), "task"),
        Case("ToT setting", "evaluator='coin'", lambda: TreeOfThoughts(llm=llm, evaluator="coin"), "evaluator"),
        Case("ToT input", "invoke({'q': ...}) without 'question'",
             lambda: TreeOfThoughts(llm=llm).invoke({"q": "x"}), "question"),
        Case("CLI flag", "run --breadth 0", lambda: _cli(["run", "q", "--breadth", "0"]), "breadth"),
        Case("CLI flag", "run --k-config 0,1", lambda: _cli(["run", "q", "--k-config", "0,1"]), "k-config"),
        Case("CLI flag", "run --max-tokens -3", lambda: _cli(["run", "q", "--max-tokens", "-3"]), "max-tokens"),
    ]
    if other_vocab_draft is not None:
        cases.append(Case("model pair", "draft with a different vocabulary",
                          lambda: SeedEngine(engine.target_model, other_vocab_draft), "vocabularies differ"))
    return cases


def _cli(argv: list[str]) -> None:
    """Parse CLI flags the way `langchain-seed` does (argparse exits: turned into ValueError)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            raise ValueError(stderr.getvalue().strip().splitlines()[-1]) from None
    check = getattr(args, "check", None)
    if check is not None:
        check(args)


def run_cases(cases: list[Case]) -> list[Outcome]:
    outcomes = []
    for case in cases:
        started = time.perf_counter()
        try:
            case.attempt()
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                raise
            outcomes.append(Outcome(case, True, type(error).__name__, _one_line(error), time.perf_counter() - started))
        else:
            outcomes.append(Outcome(case, False, "-", "accepted", time.perf_counter() - started))
    return outcomes


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:160] + ("..." if len(text) > 160 else "")


def markdown_table(outcomes: list[Outcome]) -> str:
    lines = ["| where | bad input | outcome | error | message |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        verdict = "refused, names it" if outcome.clear else ("refused" if outcome.refused else "ACCEPTED")
        message = outcome.message.replace("|", "\\|")
        lines.append(f"| {outcome.case.layer} | `{outcome.case.description}` | {verdict} | "
                     f"{outcome.error_type} | {message} |")
    return "\n".join(lines)


def tiny_llm_for_table():
    """A SeedLLM on a tiny random Llama and a tokenizer built in code (no downloads)."""
    import copy

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from langchain_seed.lc.llms import SeedLLM

    vocab = {"<unk>": 0, "<eos>": 1, **{chr(c): i + 2 for i, c in enumerate(range(32, 127))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=1, bos_token_id=None, pad_token_id=0)
    target = LlamaForCausalLM(config).eval()
    draft = copy.deepcopy(target)
    other = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "vocab_size": len(vocab) + 7})).eval()
    return SeedLLM.from_models(target, draft, tokenizer, max_tokens=8), other


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Try every bad input and print the outcomes as a Markdown table.")
    parser.parse_args(argv)
    llm, other = tiny_llm_for_table()
    good = llm.engine.submit([5, 6, 7], SamplingParams(max_tokens=64, ignore_eos=True))
    outcomes = run_cases(build_cases(llm, other))
    good_result = good.result(timeout=120)
    print(markdown_table(outcomes))
    refused = sum(o.refused for o in outcomes)
    clear = sum(o.clear for o in outcomes)
    slowest = max(o.seconds for o in outcomes)
    print(f"\n{len(outcomes)} bad inputs tried: {refused} refused, {clear} with a message naming the problem; "
          f"slowest refusal {slowest:.2f} s; the good request served meanwhile finished with "
          f"{len(good_result.token_ids)} tokens ({good_result.finish_reason}).")
    return 0 if clear == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
