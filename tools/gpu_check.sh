#!/usr/bin/env bash
# The prepared GPU check of SAM-DETR (docs/gpu.md): on one CUDA GPU, in under 5 minutes and
# without downloading anything,
#   1. the training step and inference of R50, R50-DC5 and R50-MS-SMCA at 800x1216, in
#      float32 (TF32) and AMP, with peak memory (tools/benchmark.py via tools/gpu_check.py);
#   2. the device synchronisations of one training step with 3 and 6 decoder layers
#      (torch.cuda.set_sync_debug_mode, tests/test_host_syncs.py);
#   3. the attention kernels PyTorch picks, on unpadded and padded batches;
#   4. a short AMP training on the tiny synthetic data, its --resume, and --eval-only.
# Without a CUDA GPU it refuses, runs nothing and exits 2.
#
#   tools/gpu_check.sh [OUTPUT_DIR]        (default: a new temporary folder)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
    PYTHON="$(command -v python3 || command -v python)"
fi
export PYTHONPATH="$REPO/projects/SAMDETR:$REPO${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: refused: no CUDA GPU is available to PyTorch" \
        "(torch.cuda.is_available() is False). This check measures GPU figures and needs" \
        "one CUDA GPU; nothing was run." >&2
    exit 2
fi

OUT="${1:-$(mktemp -d -t sam_detr_gpu_check.XXXXXX)}"
mkdir -p "$OUT"
section() { printf '\n==== %s ====\n' "$*"; }

section "Device"
"$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); \
print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}')"

section "1. Benchmarks at 800x1216 (batch 2; float32 with TF32, then AMP)"
"$PYTHON" tools/gpu_check.py benchmarks

section "2. Device synchronisations of one training step (3 and 6 decoder layers)"
"$PYTHON" -m pytest -q -s -p no:cacheprovider tests/test_host_syncs.py

section "3. Attention kernels (encoder and decoder)"
"$PYTHON" tools/gpu_check.py sdpa

section "4. AMP training on the tiny synthetic data, --resume, --eval-only (in $OUT)"
TINY=(--config-file configs/demo/tiny_test.yaml)
COMMON=(OUTPUT_DIR "$OUT/tiny" SOLVER.AMP.ENABLED True MODEL.DEVICE cuda)
"$PYTHON" train_net.py "${TINY[@]}" "${COMMON[@]}" SOLVER.MAX_ITER 4
"$PYTHON" train_net.py "${TINY[@]}" --resume "${COMMON[@]}" SOLVER.MAX_ITER 6
"$PYTHON" train_net.py "${TINY[@]}" --eval-only --resume "${COMMON[@]}"

section "Done: GPU check passed (outputs in $OUT)"
