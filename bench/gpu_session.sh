#!/usr/bin/env bash
# One GPU session's checks, in the order they matter: the machine, the Triton tests with
# real compilation, then the benchmark. Each step has its own time limit and writes its log
# under $OUT (default: bench/results/) as it goes, so a cut-off run still reports.
#
#   bash bench/gpu_session.sh [TEST_SECONDS] [BENCH_SECONDS] [bench/gpu.py arguments...]
#
# Python packages missing on the machine (lark) may be carried as wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
TEST_S=${1:-200}
BENCH_S=${2:-300}
shift 2 2>/dev/null || shift $#
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
        --format=csv
    python3 -c "import torch, triton, lark; print('torch', torch.__version__, 'triton', \
triton.__version__, 'lark', lark.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu-machine.txt"

echo "== tests (MASKC_GPU_TESTS=1, limit ${TEST_S}s)"
MASKC_GPU_TESTS=1 timeout "$TEST_S" python3 -m pytest tests/test_triton.py -n 6 \
    -p no:cacheprovider --durations=8 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
echo "pytest exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu-tests.log"

echo "== benchmark (limit ${BENCH_S}s)"
timeout "$BENCH_S" python3 bench/gpu.py "$@" 2>"$OUT/gpu-bench.err" | tee "$OUT/gpu-bench.md"
tail -5 "$OUT/gpu-bench.err"
