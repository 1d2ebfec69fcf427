#!/usr/bin/env bash
# The one prepared check for a machine with an accelerator (GPU or TPU), under 8 minutes:
# ResNet-50 224 px bf16 MixSiam images/s and fraction of peak, CIFAR ResNet-18 time per
# epoch, the measured peak memory next to the compile plan's prediction; one JSON file.
#   benchmarks/accelerator_check.sh [OUT.json]
# Needs JAX for the accelerator (e.g. jax[cuda12]==0.10.2), flax, optax and ml-collections;
# not TensorFlow. PYTHON names the interpreter (default python3).
# Synthetic data already on the devices: the input pipeline is not measured.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-accelerator_check.json}"
python="${PYTHON:-python3}"
"$python" -c 'import jax; d = jax.devices(); assert d[0].platform != "cpu", d; print(d)'
timeout 470 "$python" benchmarks/accelerator_check.py --out="$out" --budget_seconds=450
echo "wrote $out"
