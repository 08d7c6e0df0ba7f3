#!/usr/bin/env bash
# One prepared GPU run for a 15-minute device budget, most important first, each part started
# only while time is left (BUDGET seconds):
#   1. time to the first result: one transfer at SCALE x the official step counts in a fresh
#      process with an empty compile cache, then again with the cache it left, and what compiled
#      and for how long (benchmarks/cold_start.py --workload transfer, at batch size BATCH: from 3
#      on its stages fit one batch each and run at their own sizes; the dry run's BATCH=1 makes
#      them the programs part 2 runs, which it then reads from the cache instead of compiling)
#   2. every stage's step at batch BATCH, PyTorch at batch 1 and BATCH beside it; a whole
#      transfer of BATCH triples and a GRID grid (default 4x4) at SCALE x the official counts
#   3. batch scaling: every stage's step at the batches of SCALING (default 16 32)
#   4. every stage's step in bfloat16 (generator, VGG16 and the parser) at batch BATCH
#   5. where each stage step's device time goes at batch BATCH (benchmarks/profile_step.py)
# On an H100 (2026-11-27) the former part 2 at SCALE=0.1 took 355 s, the profile 90 s.
# Usage on a GPU machine, from the repository root:
#   OUT=dir BUDGET=seconds [SCALE=1] [PACK=file.tgz] bash benchmarks/device_run.sh
# PACK: also pack OUT into one archive after each part (a path outside OUT).
# CACHE: the compile cache of parts 2-5 (default: the cold start's, new and empty); the cold
# start always gets a new, empty one of its own.
# The CPU dry run (tests/test_device_run.py runs it in the suite, with the suite's kept compile
# cache as CACHE, so that parts 2-5 compile only what changed since the last run), every part
# at toy sizes:
#   OUT=/tmp/dry BUDGET=3000 SCALE=0.003 SIZE=64 BATCH=1 SCALING=2 GRID=1x2 \
#       EXTRA="--channel-max 16 --reps 1 --stages W+ --chunk 1" COLD_EXTRA="--channel-max 16 --loop 1,unrolled" \
#       bash benchmarks/device_run.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# No preallocation: JAX and PyTorch share the GPU here, and the peak counters mean what they say.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-benchmarks/results}"
BUDGET="${BUDGET:-500}"
SCALE="${SCALE:-1}"
SIZE="${SIZE:-1024}"
BATCH="${BATCH:-8}"
SCALING="${SCALING:-16 32}"
GRID="${GRID:-4x4}"
EXTRA="${EXTRA:-}"
COLD_EXTRA="${COLD_EXTRA:-}"
mkdir -p "$OUT"
# One compile cache for every part, new and empty (the cold start's first run needs it so): a
# program one part compiled, a later part with the same shapes and settings reads. CACHE gives
# parts 2-5 another, into which the cold start's programs are copied (below).
XLA_CACHE=$(mktemp -d)
trap 'rm -rf "$XLA_CACHE"' EXIT
export BARBERSHOP_JAX_COMPILE_CACHE="${CACHE:-$XLA_CACHE}"
start=$(date +%s)
rm -f "$OUT/failed_parts"
failed() { echo "$1" >> "$OUT/failed_parts"; }  # a file: the parts run in the pipelines' subshells
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
pack() { if [ -n "${PACK:-}" ]; then tar czf "$PACK" -C "$OUT" .; fi; }
suite() {
    # shellcheck disable=SC2086  # EXTRA: several words
    python3 benchmarks/suite.py --size "$SIZE" $EXTRA --out "$OUT" "$@" 2>&1 | grep -v "^matplotlib"
    [ "${PIPESTATUS[0]}" = 0 ] || failed "suite.py $*"
    pack
}

nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: a dry run"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
# shellcheck disable=SC2086  # COLD_EXTRA: several words
python3 benchmarks/cold_start.py --workload transfer --size "$SIZE" --scale "$SCALE" $COLD_EXTRA --cache "$XLA_CACHE" \
    --batch-size "$BATCH" --out "$OUT" \
    2>&1 | tee "$OUT/cold_start.log"
[ "${PIPESTATUS[0]}" = 0 ] || failed "cold_start.py"
pack
# With CACHE: what the cold start compiled, copied into it, for parts 2-5 to read as from one
# shared cache. Found there only where the cache key does not name the folder (tests/conftest.py
# sets JAX so); elsewhere the copies go unread. Each file appears whole (copied, then renamed),
# the program's last-use time (JAX's "-atime" file, which its bounded cache needs) before it.
copy_whole() { cp "$1" "$2/.${1##*/}.tmp" && mv "$2/.${1##*/}.tmp" "$2/${1##*/}"; }
if [ -n "${CACHE:-}" ]; then
    mkdir -p "$CACHE"
    for program in "$XLA_CACHE"/*-cache; do
        [ -e "$program" ] || continue  # nothing compiled: the pattern itself
        [ -e "$CACHE/${program##*/}" ] && continue
        [ -e "${program%-cache}-atime" ] && copy_whole "${program%-cache}-atime" "$CACHE"
        copy_whole "$program" "$CACHE"
    done
fi
[ "$(left)" -gt 200 ] && suite --batches "$BATCH" --torch-batched --transfer-batch "$BATCH" --transfer-scale "$SCALE" \
    --grid-shapes "$GRID" --deadline $(( $(left) - 150 )) | tee "$OUT/suite_b$BATCH.log"
# shellcheck disable=SC2086  # SCALING: several batch sizes
[ "$(left)" -gt 120 ] && suite --batches $SCALING --torch none --suffix=-scaling --deadline $(( $(left) - 100 )) \
    | tee "$OUT/suite_scaling.log"
[ "$(left)" -gt 90 ] && suite --batches "$BATCH" --dtype bfloat16 --parser-dtype bfloat16 --torch none \
    --deadline $(( $(left) - 60 )) | tee "$OUT/suite_bf16.log"
if [ "$(left)" -gt 60 ]; then
    # shellcheck disable=SC2086  # EXTRA: several words
    python3 benchmarks/profile_step.py --size "$SIZE" $EXTRA --batch "$BATCH" --out "$OUT" --deadline $(( $(left) - 30 )) \
        2>&1 | tee "$OUT/profile_b$BATCH.log"
    [ "${PIPESTATUS[0]}" = 0 ] || failed "profile_step.py"
    pack
fi
echo "device_run.sh: $(( $(date +%s) - start )) s"
if [ -s "$OUT/failed_parts" ]; then
    echo "device_run.sh: failed: $(tr '\n' ';' < "$OUT/failed_parts")"
    exit 1
fi
