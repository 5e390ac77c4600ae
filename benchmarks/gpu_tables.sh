#!/usr/bin/env bash
# The accelerator tables in one run, on a machine whose Python already has JAX with its
# GPU plugin, Diffrax, Equinox, Optimistix, Lineax, Optax, xarray and matplotlib (the
# package itself is taken from this checkout):
#
#   1. bench_sweep.py --vmapped: `jit(vmap)` of the default call over B runs of the
#      reference sweep problem (float64), compilation and run timed apart, against the
#      naive `jit(vmap)` of Diffrax's `Tsit5` at rtol 1e-6;
#   2. bench_events.py --problems m300: the M300 targets (the default call against
#      plain Diffrax `Tsit5` at rtol 1e-5 and the default solver at rtol 1e-11);
#   3. bench_sweep.py --gpu: the sweep at B = 4096 in float64 with `tsit5` at rtol 1e-6
#      and with the library's defaults (the sweep goal is 2,000 runs/s there).
#
# Each part has its own time limit, so that a slow part leaves the others their time.
# Usage: `bash benchmarks/gpu_tables.sh [OUTDIR]` (default `benchmarks/results`);
# writes `bench_sweep_vmapped_gpu.txt`, `bench_events_m300_gpu.txt`, `bench_sweep_gpu.txt`.
set -u
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
$py -c "
import diffrax, equinox, jax, lineax, optimistix
print('jax', jax.__version__, 'diffrax', diffrax.__version__, 'equinox', equinox.__version__,
      'optimistix', optimistix.__version__, 'lineax', lineax.__version__, jax.devices())
" 2>&1 | tee "$out/versions_gpu.txt"
timeout "${VMAP_S:-240}" $py benchmarks/bench_sweep.py --vmapped --sizes 64 512 4096 \
    --dtypes float64 2>&1 | tee "$out/bench_sweep_vmapped_gpu.txt"
timeout "${M300_S:-150}" $py benchmarks/bench_events.py --problems m300 2>&1 \
    | tee "$out/bench_events_m300_gpu.txt"
timeout "${SWEEP_S:-180}" $py benchmarks/bench_sweep.py --gpu --sizes 4096 --dtypes float64 \
    --solvers tsit5 default --naive-at 4096 2>&1 | tee "$out/bench_sweep_gpu.txt"
