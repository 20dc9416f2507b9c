"""Single-sequence greedy decoding on the default pair: autoregressive vs speculative, per draft tree.

    .venv/bin/python scripts/single_sequence_sweep.py [--prompts 3] [--reps 3] [--max-tokens 48]
        [--trees "1,1,1;1,1,1,1,1,1"] [--confidences 0,0.5] [--drafts token,feature]
        [--linear-kernel native|onednn]

Each tree runs with each draft confidence (`SpeculativeConfig.draft_confidence`; 0 drafts
the whole tree every round) and each draft of the default pair: the token draft and the
feature draft (`langchain_seed.engine.feature_draft`).

One process, every variant over the same held-out GSM8K sample prompts, interleaved in an
order rotated each repetition, the first repetition a warm-up, medians. Autoregressive
runs on torch's kernels and on the engine's (`--linear-kernel`, default native); speculative
on the engine's. Ratios are against autoregressive on torch's kernels (plain decoding as a user
would run it). Outputs are checked identical.
"""

import argparse
import statistics
import time

from langchain_seed.bench.engine_modes import heldout_question
from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.kernels import ENGINE_KERNELS
from langchain_seed.engine.models import load_draft, load_models, read_head_token_ids
from langchain_seed.pair.assemble import ensure_default_pair
from langchain_seed.pair.paths import default_feature_draft_dir
from langchain_seed.tot.prompts import default_prompts

TREES = ((1,), (1, 1), (2, 1), (1, 1, 1), (2, 1, 1), (1, 1, 1, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--trees", default=";".join(",".join(map(str, t)) for t in TREES),
                        help="semicolon-separated k_configs")
    parser.add_argument("--confidences", default="0", help="comma-separated draft_confidence values")
    parser.add_argument("--drafts", default="token,feature", help="comma-separated: token, feature")
    parser.add_argument("--linear-kernel", choices=ENGINE_KERNELS, default="native",
                        help="the engine's kernels for every variant but the torch-kernel baseline")
    args = parser.parse_args()
    engine_kernel = args.linear_kernel
    trees = [tuple(int(k) for k in tree.split(",")) for tree in args.trees.split(";")]
    confidences = [float(c) for c in args.confidences.split(",")]
    target_dir, token_dir = ensure_default_pair(progress=False)
    loaded = load_models(target_dir, token_dir)
    drafts = {"token": loaded.draft, "feature": load_draft(default_feature_draft_dir(), loaded.target)}
    head_ids = read_head_token_ids(token_dir)
    engines = {(kernel, kind): SeedEngine(loaded.target, drafts[kind], loaded.tokenizer,
                                          draft_head_token_ids=head_ids, linear_kernel=kernel)
               for kernel in ("torch", engine_kernel) for kind in args.drafts.split(",")}
    base = engines[engine_kernel, args.drafts.split(",")[0]]
    template = default_prompts("gsm8k")["sample"]
    prompts = [base.tokenizer(template.format(question=heldout_question(i), steps="", index=1, k=3)).input_ids
               for i in range(args.prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    first = args.drafts.split(",")[0]
    variants = [("autoregressive, torch kernels", ("torch", first), "autoregressive", SpeculativeConfig(k_config=(1,))),
                (f"autoregressive, {engine_kernel}", (engine_kernel, first), "autoregressive",
                 SpeculativeConfig(k_config=(1,)))]
    variants += [(f"speculative {kind} {tree} c={confidence}", (engine_kernel, kind), "speculative",
                  SpeculativeConfig(k_config=tree, draft_confidence=confidence))
                 for kind in args.drafts.split(",") for tree in trees for confidence in confidences]
    seconds: dict[str, list[float]] = {name: [] for name, *_ in variants}
    outputs: dict[str, list[list[int]]] = {}
    calls: dict[str, tuple[int, float]] = {}
    for rep in range(args.reps + 1):
        order = variants[rep % len(variants):] + variants[: rep % len(variants)]  # rotate: no fixed slot
        for name, engine_key, mode, config in order:
            started = time.perf_counter()
            results = [engines[engine_key].generate([ids], params, mode=mode, config=config)[0] for ids in prompts]
            if rep:
                seconds[name].append(time.perf_counter() - started)
            outputs[name] = [r.token_ids for r in results]
            drafted = sum(r.stats.drafted for r in results)
            calls[name] = (sum(r.stats.target_calls for r in results),
                           sum(r.stats.accepted for r in results) / drafted if drafted else 0.0)
    base_name = variants[0][0]
    base_seconds = statistics.median(seconds[base_name])
    for name, *_ in variants:
        median = statistics.median(seconds[name])
        same = outputs[name] == outputs[base_name]
        target_calls, acceptance = calls[name]
        print(f"{name:52s} {median:7.2f} s  {base_seconds / median:5.2f}x  target calls {target_calls:4d}  "
              f"acceptance {acceptance:.2f}  identical={same}")


if __name__ == "__main__":
    main()
