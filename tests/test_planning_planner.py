"""The compile plan: the real step compiled for other machines' devices, and its report.

The CPU tests run everywhere. The TPU tests need libtpu (requirements-accelerators.txt,
installed by .ci/run); each compiles the tiny config once for a 2x2 v5e slice (about
40 s of CPU), one also for a 2x4 v6e slice. The GPU test needs jax-cuda12-plugin and runs only where it is installed.
"""
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import cifar10
from mixsiam_jax import sharding
from mixsiam_jax.data import batch_format
from mixsiam_jax.errors import UserError
from mixsiam_jax.options import programs
from mixsiam_jax.planning import planner, topologies
from tests import entry_points

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny():
  """The options of configs/cifar10.py:tiny, as main.py builds them."""
  return programs.pretrain_options(cifar10.get_config("tiny"))


@pytest.mark.usefixtures("one_block_per_stage")
def test_cpu_plan_uses_cpu_decisions_and_memory_grows_with_batch(caplog):
  topology = topologies.devices_for("cpu:8")
  with caplog.at_level(logging.INFO):
    small, large = (planner.plan_and_compile(tiny(), topology, per_device_batch=b)[0]
                    for b in (2, 16))
  # A compile takes minutes on a large slice: each one says when it starts and ends.
  messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
  assert len(messages) == 4, messages
  for message, batch in zip(messages[::2], (16, 128)):
    assert message.startswith("Compiling the pretraining step for cpu:8 (8 cpu devices): "
                              f"global batch {batch} ({batch // 8} per device)"), message
  for message, batch in zip(messages[1::2], (2, 16)):
    assert re.fullmatch(rf"Compiled for cpu:8 in \d+ s \({batch} per device, remat False\): "
                        r"fits \(no memory limit known\)\.", message), message
  assert small["dtype"] == "float32" and small["conv_impl"] == "matmul_weight_grad"
  assert small["status"] == "unknown" and small["memory"]["usable"] is None
  assert large["memory"]["temporaries"] > 2 * small["memory"]["temporaries"]
  assert large["memory"]["arguments"] > small["memory"]["arguments"]  # the batch is an argument
  assert small["num_params"] == large["num_params"] > 0
  # The donated state is aliased to the new state, so it is not counted twice.
  assert small["memory"]["aliased"] > 0


def test_the_abstract_batch_is_the_pipelines_format():
  mesh = sharding.create_mesh(topologies.devices_for("cpu:8").devices)
  batch = planner.abstract_batch(16, 8, mesh)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == (
      batch_format.pretrain_batch_format(16, 8))
  assert batch["index"].dtype == np.int64  # as the pipeline feeds it
  assert all(v.sharding == sharding.batch_sharded(mesh) for v in batch.values())


@pytest.mark.parametrize("limit,start,expected", [(300, 512, 288), (300, 8, 288), (0, 4, 0),
                                                  (1, 64, 1), (5000, 2, 4608)])
def test_max_batch_search(monkeypatch, limit, start, expected):
  tried = []

  def fake_plan_and_compile(config, topology, *, per_device_batch, remat):
    del config, topology, remat
    tried.append(per_device_batch)
    return {"status": "fits" if per_device_batch <= limit else "does_not_fit"}, None, None

  monkeypatch.setattr(planner, "plan_and_compile", fake_plan_and_compile)
  lines = []
  found = planner.max_batch(None, None, remat=True, start=start, report=lines.append)
  assert found["per_device_batch"] == expected and found["remat"]
  assert [b for b, _ in found["tried"]] == tried
  assert len(lines) == len(tried)  # one progress line per compile
  # A batch already compiled (the plan's own) is not compiled again.
  first, tried[:] = list(tried), []
  planner.max_batch(None, None, remat=True, start=start,
                    known={b: b <= limit for b in first[:1]})
  assert tried == first[1:]
  if expected:  # within 1/8 below the limit, multiples of 8 from 64 up
    assert limit - expected < max(1, expected // 8) and len(tried) <= 16


def test_max_batch_remat_values_and_devices_without_a_memory_limit():
  gpu_like = topologies.Topology("h100x1", "gpu", topologies.CHIPS["h100"], (), 1 << 30)
  assert planner.max_batch_remats(["false"], gpu_like) == (False,)
  assert planner.max_batch_remats(["True", "false"], gpu_like) == (True, False)
  with pytest.raises(UserError, match=r"--max_batch_remat=yes: use false, true"):
    planner.max_batch_remats(["yes"], gpu_like)
  # No memory limit: every batch "fits", so the search would double forever.
  with pytest.raises(UserError, match=r"--topology=cpu:1 has none"):
    planner.max_batch_remats(["false"], topologies.devices_for("cpu:1"))


@pytest.fixture(scope="module")
def tpu():
  pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -r "
                      "requirements-accelerators.txt)")
  return topologies.devices_for("v5e:2x2")


@pytest.mark.usefixtures("one_block_per_stage")
@pytest.mark.parametrize("name,kind,count", [("v5e:2x2", "TPU v5 lite", 4),
                                             ("v6e:2x4", "TPU v6 lite", 8)])
def test_tpu_plan_of_the_default_config(tpu, name, kind, count):
  # v6e beyond 2x2 crashed libtpu 0.0.42.*: the pinned release must compile it.
  topology = tpu if name == tpu.name else topologies.devices_for(name)
  plan = planner.plan_and_compile(tiny(), topology, per_device_batch=4)[0]
  assert plan["platform"] == "tpu" and plan["num_devices"] == count
  assert plan["device_kind"] == kind
  # Decided from the mesh's devices, not from this CPU host.
  assert plan["dtype"] == "bfloat16" and plan["conv_impl"] == "xla"
  assert plan["program"]["while_loops"] == 0  # no per-tap weight-gradient loops
  assert plan["program"]["convolutions"] > 0
  assert plan["status"] == "fits" and plan["memory"]["total"] < plan["memory"]["usable"]
  kinds = {row["kind"] for row in plan["collectives"]}
  # Data parallel: no reduce-scatter, and the only all-gathers are BatchNorm's per-view
  # partial statistics (models/norm.py: each device's count, shift and two sums per view
  # and channel; the report counts one of them, a float32 per device, view (3) and
  # channel (64 at most here)), never parameters or activations.
  assert "all-reduce" in kinds and kinds <= {"all-reduce", "all-gather"}
  for row in plan["collectives"]:
    if row["kind"] == "all-gather":
      assert row["bytes"] <= row["count"] * count * 3 * 64 * 4, row
  # Gradients and BN statistics are summed in float32 (the online probe's count: int).
  floats = [row for row in plan["collectives"] if row["dtype"] not in ("s32", "u32")]
  assert {row["dtype"] for row in floats} == {"f32"}
  params_bytes = 4 * plan["num_params"]
  assert sum(row["bytes"] for row in floats) >= params_bytes
  assert plan["flops"]["source"] == "compiled module" and plan["flops"]["per_image"] > 0
  assert plan["step_time_estimate"]["utilization"] == planner.DEFAULT_UTILIZATION
  json.dumps(plan)


def test_tpu_mesh_counts_its_own_processes(tpu):
  del tpu
  slice16 = topologies.devices_for("v5e-16")  # 16 chips on 4 hosts
  mesh = sharding.create_mesh(slice16.devices)
  assert sharding.mesh_platform(mesh) == "tpu"
  assert sharding.check_global_batch(64, mesh) == 16


def test_a_config_that_cannot_fit_is_an_answer_not_a_crash(tpu):
  del tpu
  # A 65536-wide projector: 4.3 G parameters, 17 GB in float32 before any activation.
  # (Too large a batch fails the same way, but XLA first spends minutes trying to
  # rematerialise activations into HBM; parameters cannot be, so this fails in seconds.)
  result = subprocess.run(
      [sys.executable, "-m", "mixsiam_jax.planning", "--config=configs/cifar10.py:tiny",
       "--topology=v5e:2x2", "--config.model.projector_hidden_dim=65536",
       "--config.model.projector_dim=65536"],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == planner.EXIT_DOES_NOT_FIT, result.stderr[-2000:]
  assert "DOES NOT FIT: RESOURCE_EXHAUSTED" in result.stdout
  assert "Traceback" not in result.stderr
  # The console says what runs (INFO), and not libtpu's search for a TPU on this host.
  assert "] Compiling the pretraining step for v5e:2x2 (4 TPU v5 lite devices)" in result.stderr
  assert re.search(r"\] Compiled for v5e:2x2 in \d+ s .*: does not fit\.", result.stderr)
  assert not [n for n in entry_points.START_NOTICES if n in result.stderr], result.stderr


def test_gpu_plan_where_the_cuda_plugin_is_installed(tmp_path):
  pytest.importorskip("jax_plugins.xla_cuda12", reason="jax-cuda12-plugin is not installed")
  out = tmp_path / "plan.json"
  result = subprocess.run(
      [sys.executable, "-m", "mixsiam_jax.planning", "--config=configs/cifar10.py:tiny",
       "--topology=h100x2", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
      timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1"))
  assert result.returncode == 0, result.stderr[-2000:]
  plan = json.loads(out.read_text())
  assert plan["platform"] == "gpu" and plan["device_kind"] == "NVIDIA H100 80GB HBM3"
  assert plan["dtype"] == "bfloat16" and plan["conv_impl"] == "xla"
  assert plan["status"] == "fits"
  assert plan["flops"]["per_image"] > 0
  assert plan["flops"]["source"].startswith("unpartitioned HLO")  # not XLA:GPU's count
  assert {row["kind"] for row in plan["collectives"]} == {"all-reduce"}
  assert {r["dtype"] for r in plan["collectives"] if r["dtype"] not in ("s32", "u32")} == {"f32"}
