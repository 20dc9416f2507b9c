#!/usr/bin/env bash
# Rebuild the shipped default drafts (langchain_seed/assets/smollm2-draft and
# langchain_seed/assets/smollm2-feature-draft) from scratch.
#
# 1. fetch + convert the default target (SmolLM2-135M-Instruct) into the cache;
# 2. distill a 2-layer token draft on the target's own greedy outputs for Tree-of-Thoughts
#    GSM8K prompts (GSM8K test split; questions 0..99 held out, never trained on);
# 3. from it, distill the feature draft (EAGLE-style: it also reads the target's hidden
#    states) on the same outputs plus the target's features there;
# 4. continue the token draft on twice the prompts (a second pass of fresh draws per
#    training question): the shipped token draft is this second stage.
#
# Needs the full GSM8K test split as jsonl (question, answer): GSM8K_JSONL, default
# /work/shared/data/gsm8k_test.jsonl. CPU only, 2 threads. Target outputs are cached in
# WORK_DIR, so a rerun with other training settings does not regenerate them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
GSM8K_JSONL="${GSM8K_JSONL:-/work/shared/data/gsm8k_test.jsonl}"
WORK_DIR="${WORK_DIR:-${LANGCHAIN_SEED_HOME:-$HOME/.cache/langchain-seed}/distill-work}"

TARGET="$("$PYTHON" -c 'from langchain_seed.defaults import ensure_default_target; print(ensure_default_target())')"

# The token draft's settings, common to both of its stages; the stage's own flags follow.
distill_token_draft() {
  "$PYTHON" -m langchain_seed.cli distill \
    --target "$TARGET" \
    --out langchain_seed/assets/smollm2-draft \
    --data "$GSM8K_JSONL" \
    --layers 2 --head-size 8192 --seed 0 --heldout 100 \
    --max-train-questions 0 --max-new-tokens 96 --train-max-new-tokens 48 --gen-batch 16 \
    --batch-size 8 --soft-weight 1.0 --prompt-weight 0 --top-k 8 \
    --threads 2 --work "$WORK_DIR" "$@"
}

# The shipped token draft assembled in the cache (rebuilt whenever the asset changed).
assembled_token_draft() {
  "$PYTHON" -c 'import sys; from langchain_seed.defaults import ensure_default_draft; print(ensure_default_draft(sys.argv[1]))' "$TARGET"
}

distill_token_draft --steps 1200 --lr 1e-3

DRAFT="$(assembled_token_draft)"

"$PYTHON" -m langchain_seed.cli distill --kind feature \
  --init-draft "$DRAFT" \
  --target "$TARGET" \
  --out langchain_seed/assets/smollm2-feature-draft \
  --data "$GSM8K_JSONL" \
  --layers 2 --seed 0 --heldout 100 \
  --max-train-questions 0 --max-new-tokens 96 --train-max-new-tokens 48 --gen-batch 16 \
  --steps 600 --batch-size 8 --lr 5e-4 --prompt-weight 0.5 --feature-weight 1.0 \
  --threads 2 --work "$WORK_DIR"

DRAFT="$(assembled_token_draft)"

distill_token_draft --init-draft "$DRAFT" --prompt-passes 2 --steps 1000 --lr 5e-4
