#!/usr/bin/env bash
# Train the broad default draft (issue 25): the shipped 2-layer token draft continued on the
# target's own answers to the broad prompt mix (`langchain_seed.training.mix`: ToT prompts of
# every task, plain and chain-of-thought questions, chat conversations through the chat
# template, sub-questions, evaluation and creative requests, self-instruct), greedy and
# sampled at temperature 0.7 and 1.0, with a head chosen from those answers. Acceptance per
# held-out family (greedy chain of 4, sampled 0.7 / 1.0, the engine's own rules) before and
# after goes on the model card.
#
# One resumable command: the target's answers are appended to WORK_DIR/generations.jsonl a
# batch at a time and the training state is checkpointed every 200 steps, so rerunning the
# same command after an interruption loses nothing and gives the same draft.
#
#   DEVICE=cuda scripts/make_broad_draft.sh      # a GPU (one H100: about 25-40 minutes, estimated)
#   DEVICE=cpu  scripts/make_broad_draft.sh      # this project's 2-core CPU: about 33 hours (estimated)
#
# Estimates (not run): about 16,500 mix prompts (11 families x 1,500) + about 3,000
# self-instruct prompts, three answers each (greedy, 0.7, 1.0) = about 58,000 answers of up
# to 96 tokens (about 4.6M target tokens) and 10,000 steps x 32. From the shipped draft's own
# runs: on one H100 19,504 answers took 185 s and 6,000 steps 171 s, so about 10 minutes of
# answers and 5 of training here; on the 2-core CPU 3,657 answers took 4,520 s (1.24 s each)
# and 300 steps 1,391 s, so about 20 hours of answers and 13 of training. The engine
# measurements add a few minutes.
#
# Writes to OUT (default: a scratch dir beside the work dir); copy its draft_layers.safetensors,
# head_token_ids.json, config.json and README.md into langchain_seed/assets/smollm2-draft once the
# card's figures meet the goals (docs/BENCHMARKS.md, "The draft on any prompt").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
GSM8K_JSONL="${GSM8K_JSONL:-/work/shared/data/gsm8k_test.jsonl}"
WORK_DIR="${WORK_DIR:-${LANGCHAIN_SEED_HOME:-$HOME/.cache/langchain-seed}/distill-broad-work}"
OUT="${OUT:-$WORK_DIR/draft}"
if [ "$DEVICE" = "cpu" ]; then
  GEN_BATCH="${GEN_BATCH:-32}"; THREADS="${THREADS:-2}"; LOCK=(flock /tmp/langchain-seed-cpu.lock)
else
  GEN_BATCH="${GEN_BATCH:-512}"; THREADS="${THREADS:-8}"; LOCK=()
fi

TARGET="$("$PYTHON" -c 'from langchain_seed.pair.fetch import ensure_default_target; print(ensure_default_target())')"

"${LOCK[@]}" "$PYTHON" -m langchain_seed.cli distill --mix \
  --target "$TARGET" --out "$OUT" --work "$WORK_DIR" --data "$GSM8K_JSONL" --device "$DEVICE" \
  --init-draft langchain_seed/assets/smollm2-draft --choose-head --head-size 8192 --layers 2 \
  --heldout 100 --per-family 1500 --heldout-per-family 16 --self-instruct 600 \
  --sample-temperatures 0.7,1.0 --samples 1 --max-new-tokens 96 --top-k 8 \
  --measure-tokens 48 --measure-temperatures 0.7,1.0 --chain 4 \
  --steps 10000 --batch-size 32 --lr 5e-4 --soft-weight 1.0 --prompt-weight 0 --seed 0 \
  --checkpoint-every 200 --gen-batch "$GEN_BATCH" --threads "$THREADS"
