"""`langchain-seed bench`: every decoding method side by side on one workload.

Examples::

    langchain-seed bench --quick                        # ~10 min on a 2-core CPU
    langchain-seed bench --json bench.json --plot bench.png
    langchain-seed bench --workload single --methods hf_ar_serial,seed_sd_serial
    langchain-seed bench --target DIR --draft DIR --k-config 2,2,1 --device cuda --dtype bfloat16
    langchain-seed bench --task blocksworld --workload tot-full
    langchain-seed bench --paper --quick                # the SeeD paper's table, 3 datasets

The default run is the full measurement (``tot-step``: 20 questions, 3 repetitions);
``--quick`` runs 3 questions, 2 repetitions. The table goes to stdout, progress to stderr.
``--paper`` runs `langchain_seed.bench.paper`: 3 questions per dataset, 2 repetitions;
``--quick`` 1 question, 1 repetition (within 25 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

from langchain_seed.bench import paper, profile, protocol, report, workloads
from langchain_seed.bench.methods import BENCH_METHODS, make_method, parse_methods, reference_outputs
from langchain_seed.bench.peers import PeerUnavailable
from langchain_seed.bench.workloads import THOUGHT_TOKENS, VALUE_TOKENS, WORKLOADS
from langchain_seed.cli import bench_own_process
from langchain_seed.cli.bench_models import load_bench_models, model_pair_info
from langchain_seed.cli.common import decoding_parent, model_parent, positive_int
from langchain_seed.engine.kernels import LINEAR_KERNELS
from langchain_seed.pair.paths import cache_dir

FULL = {"tot-step": (20, 3), "single": (20, 3), "tot-full": (5, 3)}
"""Questions and repetitions of the default (full) run per workload."""
QUICK = {"tot-step": (3, 2), "single": (6, 2), "tot-full": (1, 1)}
"""Questions and repetitions of ``--quick`` (within 15 minutes on a 2-core CPU)."""
PAPER_FULL = (3, 2)
"""Questions per dataset and repetitions of the default ``--paper`` run."""
PAPER_QUICK = (1, 1)
"""Of ``--paper --quick`` (within 25 minutes on a 2-core CPU)."""


def _methods(text: str) -> list[str]:
    try:
        return parse_methods(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the ``langchain-seed`` command."""
    decoding = decoding_parent(("k_config", "draft_confidence", "draft_survival", "max_tokens", "temperature"))
    parser = subparsers.add_parser(
        "bench", parents=[model_parent(), decoding], help="compare transformers and SeeD decoding on a ToT workload",
        description="Run every decoding method on the same models and prompts, interleaved, with warm-up "
                    "and repetitions; print a table of medians (and write JSON / a plot).")
    parser.add_argument("--workload", choices=WORKLOADS, default="tot-step",
                        help="tot-step: 3 thoughts then 3 values per question (default); tot-full: whole BFS "
                             "trees through TreeOfThoughts; single: one prompt per call")
    parser.add_argument("--task", choices=workloads.TASKS, default="gsm8k",
                        help="the dataset: gsm8k (default), writing (Creative Writing) or blocksworld")
    parser.add_argument("--paper", action="store_true",
                        help="the SeeD paper's table: AR, SD, MCSD, SeeD and ours (plus transformers' batched and "
                             "assisted) on whole trees of gsm8k, writing and blocksworld; --temperature 0.7 samples")
    parser.add_argument("--markdown", dest="markdown_path", default=None, metavar="PATH",
                        help="--paper: write the table as Markdown")
    parser.add_argument("--quick", action="store_true",
                        help="few questions and repetitions (about 10 minutes on a 2-core CPU)")
    parser.add_argument("--questions", type=positive_int, default=None,
                        help=f"questions (default {FULL['tot-step'][0]}, --quick {QUICK['tot-step'][0]})")
    parser.add_argument("--reps", type=positive_int, default=None,
                        help=f"timed repetitions (default {FULL['tot-step'][1]}, --quick {QUICK['tot-step'][1]})")
    parser.add_argument("--methods", type=_methods, default=list(BENCH_METHODS),
                        help=f"comma-separated subset of: {','.join(BENCH_METHODS)} (llamacpp_serial needs "
                             "the peers extra; it is skipped, with the reason, where it cannot run)")
    parser.add_argument("--value-tokens", type=positive_int, default=VALUE_TOKENS,
                        help=f"new tokens per value evaluation in tot-step (default {VALUE_TOKENS})")
    parser.add_argument("--seed-draft", default=None,
                        help="the seed methods' own draft, e.g. a feature draft dir, which transformers' "
                             "assisted generation cannot use (default: the default pair's, else --draft)")
    parser.add_argument("--data", default=None, help="JSON lines with a 'question' field (default: packaged "
                                                    "held-out GSM8K questions)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--linear-kernel", choices=LINEAR_KERNELS, default="native",
                        help="the seed methods' CPU float32 matmuls: native (default: the engine's C kernel "
                             "for decoding sizes, oneDNN where it cannot be built), onednn, or torch "
                             "(the transformers methods always use torch's)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up call")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, profile seed_batched per round (draft / verify / other)")
    parser.add_argument("--no-own-process", dest="own_process", action="store_false",
                        help="skip running seed_batched again in a process of its own, which loads only what it "
                             "needs, for its peak memory (the table's RSS is the shared process's)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write results as JSON")
    parser.add_argument("--plot", dest="plot_path", default=None, metavar="PATH", help="write a PNG plot")
    parser.add_argument("--check-identical", action="store_true",
                        help="exit with status 2 if a seed method's output differs from the target's")
    parser.add_argument("--no-reference-cache", dest="reference_cache", action="store_false",
                        help="recompute the target's greedy reference outputs instead of reading them from "
                             "the cache ($LANGCHAIN_SEED_HOME/bench-reference/)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=run_bench)
    return parser


def resolve_counts(args: argparse.Namespace) -> tuple[int, int]:
    """(questions, reps) from the flags, the workload and ``--quick``."""
    questions, reps = (QUICK if args.quick else FULL)[args.workload]
    return args.questions or questions, args.reps or reps


def reference_cache_path(args: argparse.Namespace, models) -> Path | None:
    """Where the target's greedy outputs are kept between runs (None with --no-reference-cache)."""
    if not args.reference_cache:
        return None
    return cache_dir() / "bench-reference" / f"{protocol.model_fingerprint(models.target)}.json"


def build_workload(args: argparse.Namespace, models, questions: int, reference):
    texts = workloads.load_task_questions(args.task, questions, args.data)
    tokens = args.max_tokens or THOUGHT_TOKENS
    if args.workload == "tot-step":
        return workloads.build_tot_step(texts, models.tokenizer, reference, tokens, args.value_tokens,
                                        task=args.task)
    if args.workload == "single":
        return workloads.build_single(texts, models.tokenizer, tokens, args.task)
    return workloads.build_tot_full(texts, args.max_tokens, args.task, args.temperature or 0.0)


def _available_methods(names: list[str], models) -> list:
    """The methods to run; a peer that cannot run here is skipped with a one-line reason."""
    methods = []
    for name in names:
        try:
            methods.append(make_method(name, models))
        except PeerUnavailable as reason:
            print(f"skipping {name}: {reason}", file=sys.stderr)
    if not methods:
        raise SystemExit("no method left to run")
    return methods


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand."""
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.temperature and not (args.paper or args.workload == "tot-full"):
        raise SystemExit("--temperature samples whole trees only: use it with --paper or --workload tot-full")
    if args.paper:
        return run_paper_bench(args)
    questions, reps = resolve_counts(args)
    machine = report.machine_info(args.device)  # before loading: the load average is others' work
    warning = report.busy_warning(machine)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    models = load_bench_models(args)
    reference = protocol.CachedReference(reference_outputs(models), reference_cache_path(args, models))
    workload = build_workload(args, models, questions, reference)
    methods = _available_methods(args.methods, models)
    try:
        if args.workload == "tot-full":
            run = protocol.run_tot_full(workload, methods, models, reps, args.warmup, args.progress)
        else:
            run = protocol.run_benchmark(workload, methods, models, reference, reps, args.warmup, args.progress)
    finally:
        for method in methods:
            method.close()
    if args.profile and args.workload != "tot-full" and models.engine_draft is not None:
        run.profile = profile.profile_seed(workload, models, "seed_batched")
    own_process = _own_process_memory(args, workload, models, reference)
    machine["torch_threads"] = torch.get_num_threads()
    document = report.to_document(run, machine, model_pair_info(models),
                                  {"quick": args.quick, "warmup": args.warmup, "methods": args.methods})
    if own_process is not None:
        document["own_process"] = own_process
    print(f"workload {run.workload}: {run.settings} | {reps} reps, medians | "
          f"{document['machine']['cpu_model']}, {document['machine']['torch_threads']} torch threads")
    print(report.format_table(document["rows"]))
    if own_process is not None:
        print(report.format_own_process(own_process))
    if run.profile is not None:
        print(report.format_profile(run.profile))
    if args.json_path:
        print(f"wrote {report.write_json(document, args.json_path)}")
    if args.plot_path:
        title = f"{run.workload} - {Path(models.target_name).name} + {Path(models.draft_name).name}"
        print(f"wrote {report.write_plot(document['rows'], args.plot_path, title)}")
    bad = [row["method"] for row in document["rows"]
           if row["method"].startswith("seed_") and row["identical_to_target"] is False]
    if bad:
        print(f"warning: not identical to the target's greedy output: {', '.join(bad)}", file=sys.stderr)
        if args.check_identical:
            return 2
    return 0


def _own_process_memory(args: argparse.Namespace, workload, models, reference) -> dict[str, Any] | None:
    """seed_batched's memory in a process of its own (`bench_own_process`), with whether its
    outputs there equal the target's greedy ones; None where not asked or not run (why, on
    stderr)."""
    if not args.own_process or "seed_batched" not in args.methods or args.workload == "tot-full":
        return None
    try:
        answer = bench_own_process.measure(args, workload.groups, "seed_batched", torch.get_num_threads())
    except RuntimeError as error:
        print(f"warning: {error}", file=sys.stderr)
        return None
    outputs = answer.pop("outputs")
    answer["identical_to_target"] = len(outputs) == len(workload.groups) and protocol.outputs_identical(
        workload.groups, outputs, reference, models.eos_token_ids)
    return answer


def run_paper_bench(args: argparse.Namespace) -> int:
    """``--paper``: `langchain_seed.bench.paper.run_paper` on the flags' models; one table per
    dataset and the goals on stdout, the JSON, the grouped-bar plot and the Markdown table
    where asked. 2 when ``--check-identical`` and a greedy output differs from the target's."""
    default_questions, default_reps = PAPER_QUICK if args.quick else PAPER_FULL
    questions, reps = args.questions or default_questions, args.reps or default_reps
    machine = report.machine_info(args.device)  # before loading: the load average is others' work
    warning = report.busy_warning(machine)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    models = load_bench_models(args)
    temperature = args.temperature or 0.0
    overrides = {task: args.max_tokens for task in paper.PAPER_TASKS} if args.max_tokens else None
    result = paper.run_paper(models, questions, reps, temperature=temperature, warmup=args.warmup,
                             progress=args.progress, data=args.data, max_tokens=overrides)
    machine["torch_threads"] = torch.get_num_threads()
    document = {"kind": "paper-table", "machine": machine, "model_pair": model_pair_info(models),
                "settings": {"quick": args.quick, "questions": questions, "reps": reps, "warmup": args.warmup},
                **result}
    print(f"the SeeD paper's table: {questions} question(s) per dataset, {reps} rep(s), temperature "
          f"{temperature} | target {models.target_name} | {machine['cpu_model']}, {machine['torch_threads']} "
          "torch threads")
    print(paper.format_text(document))
    if args.json_path:
        print(f"wrote {report.write_json(document, args.json_path)}")
    if args.plot_path:
        title = f"whole trees - {Path(models.target_name).name} + {Path(models.draft_name).name}"
        print(f"wrote {paper.write_plot(document, args.plot_path, title)}")
    if args.markdown_path:
        print(f"wrote {paper.write_markdown(document, args.markdown_path)}")
    different = [f"{task}: {row['method']}" for task, dataset in document["datasets"].items()
                 for row in dataset["rows"] if row["identical_to_target"] is False]
    if different:
        print(f"warning: not identical to the target's greedy output: {', '.join(different)}", file=sys.stderr)
        if args.check_identical:
            return 2
    return 0
