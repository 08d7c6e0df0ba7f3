#!/usr/bin/env bash
# One prepared GPU run for a 15-minute device budget: the benchmark suite at
# 1024 px, most important first, each part started only while time is left (BUDGET seconds).
#   1. every stage's step at batch 8, PyTorch at batch 1 and 8 beside it, then a whole transfer
#      of 8 triples at SCALE times the official step counts (default 1: the official counts;
#      about 20 s a triple, after about 80 s of compilation)
#   2. every stage's step at batch 1, and a whole transfer of 1 triple at SCALE
#   3. where each stage step's device time goes at batch 8 (benchmarks/profile_step.py)
#   4. every stage's step in bfloat16 (generator, VGG16 and the parser) at batch 8
# On an H100 (2026-11-27) part 1 at SCALE=0.1 took 355 s, part 3 90 s.
# Usage on a GPU machine, from the repository root:
#   OUT=dir BUDGET=seconds [SCALE=1] [PACK=file.tgz] bash benchmarks/device_run.sh
# PACK: also pack OUT into one archive after each part (for a transfer that takes few files);
# a path outside OUT.
# A dry run of the whole script on a CPU, before spending device time on it:
#   OUT=/tmp/dry BUDGET=900 SCALE=0.01 SIZE=64 EXTRA="--channel-max 128 --chunk 2 --reps 1" bash benchmarks/device_run.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# No preallocation: JAX and PyTorch share the GPU here, and the peak counters mean what they say.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-benchmarks/results}"
BUDGET="${BUDGET:-500}"
SCALE="${SCALE:-1}"
SIZE="${SIZE:-1024}"
EXTRA="${EXTRA:-}"
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
suite() {
    # shellcheck disable=SC2086  # EXTRA: several words
    python3 benchmarks/suite.py --size "$SIZE" $EXTRA --out "$OUT" "$@" 2>&1 | grep -v "^matplotlib"
    [ -n "${PACK:-}" ] && tar czf "$PACK" -C "$OUT" .
}

nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: a dry run"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
suite --batches 8 --torch-batched --transfer-batch 8 --transfer-scale "$SCALE" --deadline $(( $(left) - 250 )) \
    | tee "$OUT/suite_b8.log"
[ "$(left)" -gt 120 ] && suite --batches 1 --torch none --transfer-batch 1 --transfer-scale "$SCALE" \
    --suffix=-b1 --deadline $(( $(left) - 90 )) | tee "$OUT/suite_b1.log"
if [ "$(left)" -gt 150 ]; then
    # shellcheck disable=SC2086  # EXTRA: several words
    python3 benchmarks/profile_step.py --size "$SIZE" $EXTRA --batch 8 --out "$OUT" --deadline $(( $(left) - 130 )) \
        2>&1 | tee "$OUT/profile_b8.log"
    [ -n "${PACK:-}" ] && tar czf "$PACK" -C "$OUT" .
fi
[ "$(left)" -gt 100 ] && suite --batches 8 --dtype bfloat16 --parser-dtype bfloat16 --torch none \
    --deadline $(( $(left) - 70 )) | tee "$OUT/suite_bf16.log"
echo "device_run.sh: $(( $(date +%s) - start )) s"
[ -n "${PACK:-}" ] && tar czf "$PACK" -C "$OUT" .
