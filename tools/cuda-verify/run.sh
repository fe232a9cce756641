#!/bin/bash
# Device-side driver for the HIFI CUDA verification. usage: run.sh STEP...
#   steps: build (always first if no build exists), check, test, perf
set -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
B=/tmp/hb/build/bin
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(nvidia-smi -L | head -1)" | tee -a "$OUT/info.log"
if [ ! -x $B/test-backend-ops ] || [ ! -x $B/hifi-cuda-check ]; then
    rm -rf /tmp/hb && mkdir -p /tmp/hb && tar xzf "$HERE/src.tar.gz" -C /tmp/hb || exit 1
    cmake -S /tmp/hb/src -B /tmp/hb/build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DGGML_CUDA_FA=OFF -DCMAKE_BUILD_TYPE=Release > "$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; exit 1; }
    start=$(date +%s)
    timeout ${BUILD_TIMEOUT:-520} ninja -C /tmp/hb/build -j16 test-backend-ops hifi-cuda-check > "$OUT/build.log" 2>&1
    rc=$?
    echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/info.log"
    [ $rc -eq 0 ] || { grep -B2 -A10 "error" "$OUT/build.log" | head -60; tail -5 "$OUT/build.log"; exit 1; }
fi
for step in "$@"; do
    case $step in
        build) ;;
        check) $B/hifi-cuda-check 2>&1 | tee "$OUT/hifi-cuda-check.log" ;;
        test)
            for op in MUL_MAT MUL_MAT_ID GET_ROWS; do
                echo "\$ test-backend-ops -b CUDA0 -o $op -p hifi"
                timeout ${TEST_TIMEOUT:-80} $B/test-backend-ops -b CUDA0 -o $op -p hifi 2>&1
            done | tee "$OUT/test.log" | grep -v "^  .*OK" | tail -40 ;;
        perf)
            echo "\$ test-backend-ops perf -b CUDA0 -o MUL_MAT -p 'type_a=q[3-6]_K(_hifi)?,'" | tee "$OUT/perf.log"
            timeout ${PERF_TIMEOUT:-150} $B/test-backend-ops perf -b CUDA0 -o MUL_MAT -p 'type_a=q[3-6]_K(_hifi)?,' 2>&1 | tee -a "$OUT/perf.log" | grep "n=1,k=14336\|n=8,k=14336\|n=512" | sed 's/,bs=.*runs -//' ;;
    esac
done
