#!/usr/bin/env bash
# One prepared GPU session: the 1024 px parity check, then the generator benchmark.
# Usage on a GPU machine, from the repository root:  OUT=results_dir bash benchmarks/device_run.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
python3 benchmarks/check_1024.py 2>&1 | tee "$OUT/check_1024.log"
cp benchmarks/results/check_1024_*.json "$OUT/" 2>/dev/null
python3 benchmarks/bench_generator.py --size 1024 --batches 1 2 4 8 --reps 5 --out "$OUT" 2>&1 | tee "$OUT/bench_1024.log"
python3 benchmarks/bench_generator.py --size 1024 --batches 4 --reps 5 --upconv dilated --no-torch --out "$OUT" 2>&1 | tee "$OUT/bench_1024_dilated.log"
