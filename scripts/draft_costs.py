"""Per-token cost of the default pair's two drafts against the target, in one process.

    .venv/bin/python scripts/draft_costs.py [--runs 2]

One cached single-token forward of each model on the engine's kernels (`feature_token_ms`
for the feature draft, `training.token.token_costs` for the token draft; each times its draft and
the target alternately 5 times and takes medians), `--runs` times, printing ratios.
"""

import argparse
import json

import torch

from langchain_seed.engine.models import load_draft, load_model, read_head_token_ids
from langchain_seed.pair.assemble import ensure_default_pair
from langchain_seed.pair.paths import default_feature_draft_dir
from langchain_seed.training.feature import feature_token_ms
from langchain_seed.training.token import token_costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    target_dir, token_dir = ensure_default_pair(progress=False)
    target = load_model(target_dir, weights="float32")  # the GGUF's dequantised weights
    token = load_draft(token_dir, target)
    head_ids = torch.tensor(read_head_token_ids(token_dir))
    feature = load_draft(default_feature_draft_dir(), target)
    for _ in range(args.runs):
        feature_ms, target_a = feature_token_ms(feature, target)
        token_ms, target_b = token_costs(token, target, head_ids)
        print(json.dumps({"feature_ms": round(feature_ms, 2), "target_ms": round(target_a, 2),
                          "feature_ratio": round(feature_ms / target_a, 3), "token_ms": round(token_ms, 2),
                          "target_ms_token_run": round(target_b, 2), "token_ratio": round(token_ms / target_b, 3)}))


if __name__ == "__main__":
    main()
