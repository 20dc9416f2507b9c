#!/usr/bin/env bash
# Rebuild the shipped default drafts (langchain_seed/assets/smollm2-draft and
# langchain_seed/assets/smollm2-feature-draft) from scratch.
#
# 1. fetch + convert the default target (SmolLM2-135M-Instruct) into the cache;
# 2. distill a first 2-layer token draft on the target's own greedy outputs for
#    Tree-of-Thoughts GSM8K prompts (GSM8K test split; questions 0..99 held out, never
#    trained on): 1,219 prompts, on the CPU;
# 3. from it, distill the feature draft (EAGLE-style: it also reads the target's hidden
#    states) on the same outputs plus the target's features there (CPU);
# 4. distill the shipped token draft afresh on 16 passes of prompts per training question
#    (19,504 prompts, 96 new tokens each, 1.38M target tokens) on a GPU: on one H100 this
#    took 3 minutes of target outputs and 3 of training; on this project's 2-core CPU it
#    would take about 16 hours (estimated from stage 2's rates, not run);
# 5. continue that draft on the CPU on 3 more passes of fresh prompts (passes 16-18: 3,657
#    prompts, 96 new tokens each), 300 steps x 32 at lr 3e-4: on this project's 2-core
#    CPU 75 minutes of target outputs and 23 of training.
#
# Needs the full GSM8K test split as jsonl (question, answer): GSM8K_JSONL, default
# /work/shared/data/gsm8k_test.jsonl. Stages 2-3 and 5 run on the CPU with 2 threads; stage 4
# on DEVICE (default cuda; SKIP_GPU_STAGE=1 stops after stage 3). Target outputs are cached
# in WORK_DIR, so a rerun with other training settings does not regenerate them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
GSM8K_JSONL="${GSM8K_JSONL:-/work/shared/data/gsm8k_test.jsonl}"
WORK_DIR="${WORK_DIR:-${LANGCHAIN_SEED_HOME:-$HOME/.cache/langchain-seed}/distill-work}"

TARGET="$("$PYTHON" -c 'from langchain_seed.pair.fetch import ensure_default_target; print(ensure_default_target())')"

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
  "$PYTHON" -c 'import sys; from langchain_seed.pair.assemble import ensure_default_draft; print(ensure_default_draft(sys.argv[1]))' "$TARGET"
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

[ "${SKIP_GPU_STAGE:-0}" = "1" ] && exit 0

distill_token_draft --device "${DEVICE:-cuda}" --prompt-passes 16 --train-max-new-tokens 96 \
  --gen-batch 512 --batch-size 32 --steps 6000 --lr 1e-3 --threads 8

distill_token_draft --init-draft "$(assembled_token_draft)" --first-pass 16 --prompt-passes 3 \
  --train-max-new-tokens 96 --gen-batch 64 --batch-size 32 --steps 300 --lr 3e-4
