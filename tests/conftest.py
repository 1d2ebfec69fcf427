"""Test set-up: eight simulated CPU devices, so every sharding path runs here.

XLA reads the flag once, when jax is first imported, so it must be set before
any test module imports jax.
"""
import os

# Optimisation level 0 cuts XLA:CPU compile times (random initialisers especially)
# by 5-10x; it changes code generation, not results.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
# TensorFlow is only used for input pipelines; keep it off any accelerator and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402,F401  (must come after XLA_FLAGS)
