#!/usr/bin/env bash
# GPU benchmark run (for the `device` machine: CUDA torch and jax preinstalled, no network).
# Before (here, with network): pip download --no-deps -d .gpuwheels pyro-ppl==1.9.2 pyro-api numpyro==0.22.0
# (the device image has no pyro, and its numpyro 0.21.0 fails with its jax 0.11.2).
# There: bash benchmarks/gpu_bench.sh, carrying .gpuwheels/.
# Writes logs to $OUT (default benchmarks/out).
set -uo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
python3 -m pip install --quiet --no-deps --target .gpuwheels/site .gpuwheels/*.whl
export PYTHONPATH="$PWD/.gpuwheels/site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, jax, numpyro, pyro; print('torch', torch.__version__, 'jax', jax.__version__, jax.devices(), 'numpyro', numpyro.__version__, 'pyro', pyro.__version__)" | tee -a "$OUT/gpu.txt"
# 1. Per-step time on the GPU: hand-written ARSM vs ARSM_ELBO vs JitARSM_ELBO vs RLOO vs
#    TraceGraph (Pyro), at batch 200 and 100
timeout 200 python3 benchmarks/vae_bench.py --device cuda --steps 30 --out "$OUT" 2>&1 | tail -25 | tee "$OUT/vae_bench_cuda.txt"
timeout 120 python3 benchmarks/vae_bench.py --device cuda --steps 30 --batch 100 \
  --methods hand-arsm,arsm,jit-arsm,tracegraph --out "$OUT/b100" 2>&1 | tail -12 | tee "$OUT/vae_bench_cuda_b100.txt"
# 2. The README main job on the GPU, both backends, equal wall-clock (40 s each), digits
for est in arsm rloo; do
  timeout 150 python3 examples/categorical_vae.py --device cuda --estimator $est --dataset digits --time-budget 40 --out "$OUT" 2>&1 | tail -6 | tee -a "$OUT/vae_cuda_pyro.txt"
done
for est in arsm rloo; do
  timeout 150 python3 examples/categorical_vae.py --backend numpyro --estimator $est --dataset digits --time-budget 40 --out "$OUT" 2>&1 | tail -6 | tee -a "$OUT/vae_cuda_numpyro.txt"
done
