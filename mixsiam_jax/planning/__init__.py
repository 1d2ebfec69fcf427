"""Planning: the real pretraining step compiled for other machines, without their devices.

  planner.py       compiles the step for a TPU slice or GPU host (``python -m
                   mixsiam_jax.planning``): per-device memory, FLOPs, collectives.
  costs.py         what a compiled step costs, read from the compiler: memory, FLOPs,
                   collectives, program shape; the summary lines.
  topologies.py    the named machines (TPU slices, H100 hosts, this host's CPUs).
  gpu_specs/       device descriptions for deviceless GPU compiles.
  accelerators.py  the accelerators a host has, seen without JAX; the stop when JAX
                   would silently fall back to the CPU.
"""
