#!/usr/bin/env bash
# One device call: a launch-config sweep of our kernels, the GPU SSD benchmark (with the sweep's fastest launch
# and our scan tuned at each shape), the GPU test tier of kernels/ (and of the Mamba-2 LM on them) and Nsight
# Compute's counters for one step of ours, and of mamba_ssm's if time is left; results under $OUT (up to eight
# files).
#
#   bash kernels/benchmarks/gpu_check.sh            # from the repo root, on a CUDA machine (575 s at most)
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
# The whole script's limit: a device call may run 600 s. Steps 1-4 have their own limits (550 s in all); step 5
# runs only in what they leave.
BUDGET=${GPU_CHECK_SECONDS:-575}
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
status=0
# The benchmarks first: they are what a lent GPU is for, and the suite checks every implementation's y and
# gradients against mamba_ssm's at every shape, so a wrong kernel shows there too.
# 1. Our kernels under other launch configs (compiled in parallel first), then the fastest forward's and the
#    fastest step's changes together; the fastest step goes on to step 2.
timeout 140 "$PYTHON" -m kernels.benchmarks.ssd --suite launch --out-dir "$OUT" 2>&1 | tee "$OUT/gpu_launch.txt" \
    || status=$?
best="$OUT/ssd_launch_best.json"
[ -f "$best" ] && cat "$best" || best=""

# 2. Triton (default launch, the sweep's best, and tuned at each shape) vs mamba_chunk_scan_combined, bf16,
#    L 2K..64K. Tuning times every launch the sweep did at every shape and mode (kernels.ssd.tuning); their
#    kernels are compiled by then, in Triton's cache.
timeout 190 "$PYTHON" -m kernels.benchmarks.ssd --suite gpu --tuned --out-dir "$OUT" ${best:+--launch-from "$best"} \
    2>&1 | tee "$OUT/gpu_bench.txt" || status=$?

# 3. The gpu tier: fp32/fp16/bf16 vs the naive recurrence, vs mamba_chunk_scan_combined, and the
#    Mamba-2 LM training on the Triton scan as on the torch one.
# Compiling on a cold cache (ours, and mamba_ssm's autotuned kernels) is most of this step: the first run
# gave 6 tests 130 s. pytest-xdist's workers, where installed, compile in parallel. SIGINT at the limit:
# pytest still prints what failed so far and why.
workers=$("$PYTHON" -c "import xdist" 2>/dev/null && echo "-n 8" || true)
timeout -s INT 160 "$PYTHON" -m pytest tests/kernels tests/lightning_modules/common/test_mamba2.py -m gpu $workers \
    -v --tb=short -rfEs --durations=10 -p no:cacheprovider -o addopts="" --import-mode=importlib 2>&1 \
    | tee "$OUT/gpu_tests.txt" || status=$?

# 4. Nsight Compute's counters for each of our kernels in one forward+backward at the sweep's shape: what
#    holds each below copy bandwidth. Not every machine lets ncu read them; then its log says why.
NCU=(ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section LaunchStats
     --section WarpStateStats --csv --page details)
if command -v ncu >/dev/null; then
    timeout 60 "${NCU[@]}" --log-file "$OUT/ncu_step.csv" "$PYTHON" -m kernels.benchmarks.ssd --suite step \
        || echo "gpu_check.sh: ncu failed, see $OUT/ncu_step.csv" >&2
fi

# 5. The same counters for mamba_ssm's step, to read beside ours kernel by kernel: its kernels ran at 77% of copy
#    bandwidth where ours ran at a quarter (session 9). Only in the time steps 1-4 left.
left=$((BUDGET - SECONDS))
if command -v ncu >/dev/null && [ "$left" -ge 40 ]; then
    timeout "$left" "${NCU[@]}" --log-file "$OUT/ncu_step_mamba_ssm.csv" \
        "$PYTHON" -m kernels.benchmarks.ssd --suite step --impl mamba_chunk_scan_combined \
        || echo "gpu_check.sh: ncu of mamba_ssm's step failed or ran out of time, see $OUT/ncu_step_mamba_ssm.csv" >&2
else
    echo "gpu_check.sh: ${left} s left of ${BUDGET}; no Nsight Compute counters for mamba_ssm's step" >&2
fi
exit $status
