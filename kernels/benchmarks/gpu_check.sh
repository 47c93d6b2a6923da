#!/usr/bin/env bash
# One device call: the GPU test tier of kernels/ (and of the Mamba-2 LM on them), the GPU SSD benchmark
# and a launch-config sweep of our kernels; results under $OUT.
#
#   bash kernels/benchmarks/gpu_check.sh            # from the repo root, on a CUDA machine (< 10 min)
#
# mamba_ssm is the benchmark's peer. If it is not installed, it is installed pure-Python
# (its Triton kernels are all we compare against) from the sdist carried with the tree;
# its CUDA extension is stubbed inside the test and benchmark processes. Fetch the sdist once with
#   pip download --no-deps --no-binary :all: mamba-ssm==2.3.2.post1 -d kernels/benchmarks/vendor
# and carry that (git-ignored) folder to the GPU machine.
set -euo pipefail

PYTHON=${PYTHON:-python3}
OUT=${OUT:-kernels/benchmarks/results}
MAMBA_SDIST=${MAMBA_SDIST:-kernels/benchmarks/vendor/mamba_ssm-2.3.2.post1.tar.gz}
mkdir -p "$OUT"

"$PYTHON" -c "import torch, triton; assert torch.cuda.is_available(), 'gpu_check.sh needs CUDA'; \
print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mamba_ssm') is None)"; then
    if [ -f "$MAMBA_SDIST" ]; then
        MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "$PYTHON" -m pip install --quiet \
            --no-build-isolation --no-deps "$MAMBA_SDIST" \
            || echo "gpu_check.sh: installing $MAMBA_SDIST failed; mamba_ssm comparisons will be skipped" >&2
    else
        echo "gpu_check.sh: $MAMBA_SDIST not found; mamba_ssm comparisons will be skipped" >&2
    fi
fi

export PYTHONUNBUFFERED=1
# 1. The gpu tier: fp32/fp16/bf16 vs the naive recurrence, vs mamba_chunk_scan_combined, and the
#    Mamba-2 LM training on the Triton scan as on the torch one.
status=0
# Compiling on a cold cache (ours, and mamba_ssm's autotuned kernels) is most of this step: the first run
# gave 6 tests 130 s. pytest-xdist's workers, where installed, compile in parallel. SIGINT at the limit:
# pytest still prints what failed so far and why.
workers=$("$PYTHON" -c "import xdist" 2>/dev/null && echo "-n 4" || true)
timeout -s INT 200 "$PYTHON" -m pytest tests/kernels tests/lightning_modules/common/test_mamba2.py -m gpu $workers \
    -v --tb=short -rfEs --durations=10 -p no:cacheprovider -o addopts="" --import-mode=importlib 2>&1 \
    | tee "$OUT/gpu_tests.txt" || status=$?

# 2. Triton vs mamba_chunk_scan_combined, bf16, L 2K..64K.
timeout 200 "$PYTHON" -m kernels.benchmarks.ssd --suite gpu --out-dir "$OUT" 2>&1 | tee "$OUT/gpu_bench.txt" \
    || status=$?

# 3. Our kernels under other launch configs: what the next tuning step should try.
timeout 150 "$PYTHON" -m kernels.benchmarks.ssd --suite launch --out-dir "$OUT" 2>&1 | tee "$OUT/gpu_launch.txt" \
    || status=$?
exit $status
