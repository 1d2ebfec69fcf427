"""Reliability promises of pretraining (issue 7), each proven end to end on the tiny config.

Real processes (tests/reliability_worker.py = main.py + a record of the example
ids each step consumed) run the tiny config (ResNet-18 width 8, 16 px, batch 16)
on the 200-JPEG CIFAR folder for 12 steps, logging every step and checkpointing
every 3. One straight 8-device run is the reference for everything else.

Data order. Batches are a pure function of (seed, step) (data/pipeline.py's
stateless index_shuffle; ``start_step`` skips at the index level), so nothing
about the iterator is checkpointed. The tests check the run's *consumption*:
the worker records batch['index'] of every batch the loop takes, and the
concatenation over interrupted runs must equal the straight run's list.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import cifar10
from mixsiam_jax import optim, pretrain, sharding
from mixsiam_jax.checkpoints import reader, storage
from mixsiam_jax.options.programs import from_config
from mixsiam_jax.run import cli
from mixsiam_jax.workdir import metrics_file
from tests.helpers import snapshot

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "reliability_worker.py"
STEPS = 12
LOSS_KEYS = ("loss", "loss_siam", "loss_mix", "z_std", "grad_norm", "param_norm", "lr")
STATE_ITEMS = ("step", "params", "batch_stats", "opt_state", "rng")
RUN_FLAGS = ("--config=configs/cifar10.py:tiny", "--config.eval_dataset=",
             f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=3")

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------
def child_env(devices, ids_file=None):
  env = dict(os.environ)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             "--xla_backend_optimization_level=0",  # as conftest.py: same numerics in-process
             TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  env.pop("MIXSIAM_EXAMPLE_IDS", None)
  if ids_file:
    env["MIXSIAM_EXAMPLE_IDS"] = str(ids_file)
  return env


def start(workdir, data, *extra, devices=8, ids_file=None, log=None, program=WORKER):
  """Starts a run of the worker (or main.py) in the background; output goes to ``log``."""
  log = log or pathlib.Path(f"{workdir}.{time.monotonic_ns()}.log")
  out = open(log, "w")
  proc = subprocess.Popen(
      [sys.executable, str(program), *RUN_FLAGS, f"--config.dataset=folder:{data}",
       f"--workdir={workdir}", *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
      env=child_env(devices, ids_file))
  proc.log = log
  return proc


def finish(proc, timeout=240):
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise AssertionError(f"run timed out after {timeout}s:\n{output(proc)[-3000:]}")
  return proc.returncode


def output(proc):
  return pathlib.Path(proc.log).read_text()


def wait_for(predicate, proc, timeout=240, what=""):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc {proc.returncode}) before {what}:\n"
                           f"{output(proc)[-3000:]}")
    time.sleep(0.02)
  proc.kill()
  raise AssertionError(f"timed out waiting for {what}")


def run_to_end(workdir, data, *extra, **kw):
  proc = start(workdir, data, *extra, **kw)
  rc = finish(proc)
  assert rc == 0, f"run failed (rc {rc}):\n{output(proc)[-3000:]}"
  return output(proc)


def steps_on_disk(workdir):
  """Step directories as Orbax reports them (what a resume would pick)."""
  manager = storage.create_manager(storage.checkpoint_dir(str(workdir)), read_only=True,
                                   async_save=False)
  try:
    return sorted(manager.all_steps()), manager.latest_step()
  finally:
    manager.close()


def restore_all(workdir, devices, step=None):
  """The whole state tree of a checkpoint, as host arrays, replicated on ``devices``."""
  tree, _, step = reader.restore_replicated(str(workdir), sharding.create_mesh(devices),
                                            step=step, items=STATE_ITEMS)
  return jax.device_get(tree), step


def leaves(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b, what):
  la, lb = leaves(a), leaves(b)
  assert sorted(la) == sorted(lb), f"{what}: different structure"
  for key in la:
    assert la[key].dtype == lb[key].dtype, f"{what}: {key} dtype {la[key].dtype} vs {lb[key].dtype}"
    assert np.array_equal(la[key], lb[key]), (
        f"{what}: {key} differs (max abs diff "
        f"{np.max(np.abs(la[key].astype(np.float64) - lb[key].astype(np.float64)))})")


def curves(workdir, keys=LOSS_KEYS):
  return {row["step"]: {k: row[k] for k in keys if k in row}
          for row in metrics_file.read_metrics(str(workdir)) if "loss" in row}


def read_ids(path):
  rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]
  return [r["ids"] for r in rows]


def copy_run(src, dst, drop_steps=()):
  shutil.copytree(src, dst)
  for step in drop_steps:
    shutil.rmtree(pathlib.Path(dst) / "checkpoints" / str(step))
  return pathlib.Path(dst)


def tiny_config(data, **overrides):
  """The same config as RUN_FLAGS, in-process."""
  config = cifar10.get_config("tiny")
  config.dataset = f"folder:{data}"
  config.eval_dataset = ""
  config.num_train_steps = STEPS
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  for key, value in overrides.items():
    config[key] = value
  return config


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------------------
# The reference: one straight 8-device run of 12 steps.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight(cifar_jpeg_folder, tmp_path_factory):
  root = tmp_path_factory.mktemp("straight")
  run_to_end(root / "run", cifar_jpeg_folder, ids_file=root / "ids.jsonl")
  return root / "run", read_ids(root / "ids.jsonl")


# ---------------------------------------------------------------------------
# Promises 1-3: SIGTERM, SIGKILL, a crash in the middle of a save; exact resume.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(straight, cifar_jpeg_folder, tmp_path_factory):
  """One run interrupted three ways, then finished.

  A: periodic checkpoints off (checkpoint_every_steps=100, a safe change), SIGTERM
     once step 4 has taken its batch -> saves at its current step s, exits 0.
  B: rerun with the reference flags; SIGKILL once checkpoint 9 exists (mid-step,
     async saves pending).
  Then a crash in the middle of saving step 12 is simulated: a
  12.orbax-checkpoint-tmp-<t> directory holding part of a real step 12.
  C: rerun to the end.
  """
  root = tmp_path_factory.mktemp("interrupted")
  workdir, ckpts = root / "run", root / "run" / "checkpoints"
  facts = {}
  a_ids = root / "ids_a.jsonl"
  a = start(workdir, cifar_jpeg_folder, "--config.checkpoint_every_steps=100", ids_file=a_ids)
  wait_for(lambda: a_ids.exists() and len(a_ids.read_text().splitlines()) >= 4, a,
           what="step 4")
  a.send_signal(signal.SIGTERM)
  try:
    wait_for(lambda: "Stopped at step" in output(a), a, what="the stop message")
    stopped_at = time.monotonic()
  except AssertionError:
    stopped_at = None  # The assertions on a_rc and a_stop below say what went wrong.
  facts["a_rc"] = finish(a)
  facts["a_exit_after_stop"] = time.monotonic() - stopped_at if stopped_at else None
  facts["a_log"] = output(a)
  stopped = re.search(r"Stopped at step (\d+) on request", facts["a_log"])
  facts["a_stop"] = int(stopped.group(1)) if stopped else None
  facts["a_steps"] = steps_on_disk(workdir)
  facts["a_ids"] = read_ids(a_ids)
  if facts["a_rc"] != cli.EXIT_PREEMPTED or not facts["a_stop"]:
    return facts
  facts["a_saved_step"] = int(restore_all(workdir, jax.devices()[:1])[0]["step"])

  b = start(workdir, cifar_jpeg_folder, ids_file=root / "ids_b.jsonl")
  wait_for(lambda: (ckpts / "9").is_dir(), b, what="checkpoint 9")
  b.kill()
  facts["b_rc"] = finish(b)
  facts["b_log"] = output(b)
  facts["b_ids"] = read_ids(root / "ids_b.jsonl")

  # Crash mid-save of step 12: the temporary directory Orbax writes into, half full.
  partial = ckpts / f"12{ocp.path.step.TMP_DIR_SUFFIX}-{int(time.time())}"
  shutil.copytree(straight[0] / "checkpoints" / "12", partial)
  for f in sorted(partial.rglob("*"))[::2]:
    if f.is_file():
      f.unlink()
  facts["partial"] = partial.name
  facts["b_steps"] = steps_on_disk(workdir)
  try:
    facts["b_restore_step"] = reader.restore_replicated(
        str(workdir), sharding.create_mesh(jax.devices()[:1]), items=("step",))[2]
  except Exception as e:  # pylint: disable=broad-except
    facts["b_restore_step"] = repr(e)

  c = start(workdir, cifar_jpeg_folder, ids_file=root / "ids_c.jsonl")
  facts["c_rc"] = finish(c)
  facts["c_log"] = output(c)
  facts["c_ids"] = read_ids(root / "ids_c.jsonl")
  facts["workdir"] = workdir
  return facts


def test_sigterm_saves_current_step_and_exits_zero(interrupted):
  """Promise 3: SIGTERM -> checkpoint at the step it arrived in, fully written, exit 75."""
  f = interrupted
  assert f["a_rc"] == cli.EXIT_PREEMPTED, f"exit code {f['a_rc']}:\n{f['a_log'][-3000:]}"
  stop = f["a_stop"]
  assert stop is not None, f"no 'Stopped at step' message:\n{f['a_log'][-3000:]}"
  assert 4 <= stop < STEPS, f"stopped at {stop}: the signal did not interrupt the run"
  steps, latest = f["a_steps"]
  # Periodic saves were off: this checkpoint exists only because of SIGTERM.
  assert steps == [stop], f"after SIGTERM at step {stop} the checkpoints are {steps}"
  assert f["a_saved_step"] == stop  # fully written: it restores, with the right step
  assert len(f["a_ids"]) == stop  # it trained exactly up to the step it saved
  # The rerun starts from the SIGTERM checkpoint (B's log) ...
  assert f"at step {stop}." in f["b_log"], f["b_log"][-3000:]


def test_sigterm_exit_follows_the_stop_at_once(interrupted):
  """After 'Stopped at step N' only the pending save remains: no teardown wait.

  Python's teardown of the tf.data iterator waits for TensorFlow's autotuning
  thread to sleep out its period (seconds to a minute, growing with the run's
  length); main.py skips it. The save of this tiny state takes well under 1 s.
  """
  seconds = interrupted["a_exit_after_stop"]
  assert seconds is not None and seconds < 5.0, f"exit {seconds} s after the stop message"


def test_partial_save_is_never_latest(interrupted):
  """Promise 2: a crashed save (Orbax's tmp directory) is invisible; the previous step is used."""
  f = interrupted
  assert f["b_rc"] == -signal.SIGKILL
  steps, latest = f["b_steps"]
  assert latest == 9 and 12 not in steps, (steps, latest, f["partial"])
  assert f["b_restore_step"] == 9  # what linear probing / kNN would restore
  assert "at step 9." in f["c_log"], f"rerun did not resume from 9:\n{f['c_log'][-3000:]}"
  assert f["c_rc"] == 0, f["c_log"][-3000:]
  assert steps_on_disk(f["workdir"])[1] == STEPS


def test_resume_after_sigterm_sigkill_and_crash_is_bit_exact(interrupted, straight):
  """Promise 1 (+8): the interrupted run ends bit-identical to the straight one.

  Params, optimiser state, BN statistics, step and rng of the final checkpoint
  are equal bit for bit; every step's logged loss is equal; the batches used,
  concatenated over the three processes, are the straight run's, in order.
  """
  f = interrupted
  assert f["c_rc"] == 0, f["c_log"][-3000:]
  ref_dir, ref_ids = straight
  mine, step = restore_all(f["workdir"], jax.devices())
  ref, ref_step = restore_all(ref_dir, jax.devices())
  assert step == ref_step == STEPS
  assert int(mine["step"]) == STEPS
  assert_trees_equal(mine, ref, "final checkpoint, interrupted vs straight")
  assert curves(f["workdir"]) == curves(ref_dir)
  assert len(ref_ids) == STEPS and all(len(ids) == 16 for ids in ref_ids)
  s = f["a_stop"]
  used = f["a_ids"][:s] + f["b_ids"][:9 - s] + f["c_ids"]
  assert f["a_ids"] == ref_ids[:s], "SIGTERM run saw other examples than the straight run"
  assert f["b_ids"][:9 - s] == ref_ids[s:9], "the rerun after SIGTERM saw other examples"
  assert len(f["c_ids"]) == STEPS - 9
  assert used == ref_ids, "the examples (or their order) differ from the straight run"


def test_keys_are_stored_as_uint32_key_data(straight):
  """Promise 8: the rng leaf is raw uint32 key data, on disk and restored."""
  workdir, _ = straight
  manager = storage.create_manager(storage.checkpoint_dir(str(workdir)), read_only=True,
                                   async_save=False)
  try:
    saved = manager.item_metadata(STEPS)[storage.STATE]["rng"]
  finally:
    manager.close()
  assert np.dtype(saved.dtype) == np.uint32, saved
  tree, _ = restore_all(workdir, jax.devices()[:1])
  assert tree["rng"].dtype == np.uint32 and tree["rng"].shape == (2,)
  key = jax.random.wrap_key_data(tree["rng"])  # usable as a key again
  assert jax.random.key_data(key).dtype == np.uint32


# ---------------------------------------------------------------------------
# Promise 5: another topology.
# ---------------------------------------------------------------------------
def test_checkpoints_move_between_8_and_1_devices(straight, cifar_jpeg_folder, tmp_path):
  """8-device checkpoint 6 -> resume on 1 device to 12 (writing 9, 12 on 1 device);
  1-device checkpoint 9 -> resume on 8 devices to 12; restore_replicated both ways.
  Curves match the straight run to float32 round-off (reduction order differs)."""
  ref_dir, _ = straight
  ref = curves(ref_dir)
  one = copy_run(ref_dir, tmp_path / "one", drop_steps=(9, 12))
  config = tiny_config(cifar_jpeg_folder)
  pretrain.train_and_evaluate(from_config(config), str(one), devices=jax.devices()[:1])
  assert steps_on_disk(one)[1] == STEPS
  eight = copy_run(one, tmp_path / "eight", drop_steps=(12,))  # newest: 9, written on 1 device
  pretrain.train_and_evaluate(from_config(config), str(eight), devices=jax.devices())
  for run in (one, eight):
    got = curves(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(7, STEPS + 1):
      for key in LOSS_KEYS:
        np.testing.assert_allclose(got[step][key], ref[step][key], rtol=2e-4, atol=2e-5,
                                   err_msg=f"{run.name}: {key} at step {step}")
  # restore_replicated (linear probing, kNN) across layouts: 8-written -> 1, 1-written -> 8.
  written_on_8, _ = restore_all(ref_dir, jax.devices()[:1])
  written_on_1, _ = restore_all(one, jax.devices(), step=9)
  written_on_1_again, _ = restore_all(one, jax.devices()[:1], step=9)
  assert_trees_equal(written_on_1, written_on_1_again, "1-device checkpoint on 8 vs 1 devices")
  tree, _, _ = reader.restore_replicated(str(one), sharding.create_mesh(jax.devices()),
                                         step=9)
  assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(tree))
  for key in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(written_on_8[key]), jax.tree.leaves(written_on_1[key])):
      assert a.shape == b.shape


# ---------------------------------------------------------------------------
# Promise 6: divergence.
# ---------------------------------------------------------------------------
def test_non_finite_stops_before_checkpoint(straight, cifar_jpeg_folder, tmp_path, monkeypatch):
  """lr 1e30 from step 10 on (resuming at 9, checkpointing every step): the run stops
  naming the step, no checkpoint after 9 is written, and 9 still restores (finite)."""
  workdir = copy_run(straight[0], tmp_path / "run", drop_steps=(12,))
  monkeypatch.setattr(optim, "scaled_learning_rate", lambda base_lr, batch_size: 1e30)
  config = tiny_config(cifar_jpeg_folder, checkpoint_every_steps=1)  # a safe change
  with pytest.raises(pretrain.TrainingError, match=r"non-finite .* at step 10\b"):
    pretrain.train_and_evaluate(from_config(config), str(workdir))
  steps, latest = steps_on_disk(workdir)
  assert latest == 9, f"checkpoints after the failure: {steps}"
  for step in steps:
    tree, _ = restore_all(workdir, jax.devices()[:1], step=step)
    bad = [k for k, v in leaves(tree).items() if not np.all(np.isfinite(v))]
    assert not bad, f"checkpoint {step} holds non-finite {bad[:3]}"
  # The safe change was recorded.
  record = json.loads((workdir / "config_changes.jsonl").read_text().splitlines()[-1])
  assert record["step"] == 9
  assert {"field": "checkpoint_every_steps", "old": 3, "new": 1} in record["changes"]


# ---------------------------------------------------------------------------
# Promise 7: changed config on resume, through main.py.
# ---------------------------------------------------------------------------
def test_changed_config_on_resume_is_refused_untouched(straight, cifar_jpeg_folder, tmp_path):
  workdir = copy_run(straight[0], tmp_path / "run", drop_steps=(12,))
  before = snapshot(workdir)
  proc = start(workdir, cifar_jpeg_folder, "--config.model.width=16", "--config.model.depth=34",
               "--config.method.aggregation=mean", "--config.log_every_steps=5",
               program=REPO / "main.py")
  rc = finish(proc, timeout=120)
  log = output(proc)
  assert rc != 0
  for line in ("model.width: 8 in the workdir, 16 now", "model.depth: 18 in the workdir, 34 now",
               "method.aggregation: 'max' in the workdir, 'mean' now"):
    assert line in log, log[-3000:]
  assert "log_every_steps" not in log.split("different configuration")[-1]
  assert "Traceback" not in log
  assert snapshot(workdir) == before


# ---------------------------------------------------------------------------
# Promise 4: two processes.
# ---------------------------------------------------------------------------
def start_pair(workdir, data, *extra, port, ids=False, attempt=1):
  return [start(workdir, data, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                f"--process_id={i}", *extra, devices=4,
                log=pathlib.Path(f"{workdir}.{attempt}.p{i}.log"),
                ids_file=pathlib.Path(f"{workdir}.ids{i}.jsonl") if ids else None)
          for i in range(2)]


def test_two_processes_stop_together_and_match_one(straight, cifar_jpeg_folder, tmp_path):
  """2 processes x 4 devices (jax.distributed on localhost) = the 8-device 1-process run.

  A preemption notice reaching one host (SIGTERM to process 1 once step 2 is
  logged): both processes save the same step and exit 75 (preempted). The save is collective,
  so they agree on the step through JAX's preemption service
  (multihost_utils.reached_preemption_sync_point). Rerun, they finish the run:
  each step's global batch is the straight run's, row for row (process 0 loads
  rows 0-7, process 1 rows 8-15); logged metrics and final parameters agree to
  float32 round-off (cross-process sums run in another order).
  """
  ref_dir, ref_ids = straight
  workdir = tmp_path / "run"
  procs = start_pair(workdir, cifar_jpeg_folder, port=free_port(), ids=True)
  wait_for(lambda: (workdir / "metrics.jsonl").exists(), procs[0], what="step 2")
  procs[1].send_signal(signal.SIGTERM)
  rcs = [finish(p, timeout=200) for p in procs]
  assert rcs == [cli.EXIT_PREEMPTED] * 2, "\n".join(output(p)[-2000:] for p in procs)
  stopped = [re.search(r"Stopped at step (\d+) on request", output(p)) for p in procs]
  assert all(stopped), "\n".join(output(p)[-2000:] for p in procs)
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step and 2 <= step < STEPS
  assert steps_on_disk(workdir)[1] == step

  procs = start_pair(workdir, cifar_jpeg_folder, port=free_port(), ids=True, attempt=2)
  rcs = [finish(p, timeout=400) for p in procs]
  assert rcs == [0, 0], "\n".join(output(p)[-2000:] for p in procs)
  ids = [read_ids(f"{workdir}.ids{i}.jsonl") for i in range(2)]
  assert [a + b for a, b in zip(*ids)] == ref_ids, "the global batches differ from 1 process"
  got, ref = curves(workdir), curves(ref_dir)
  assert sorted(got) == list(range(1, STEPS + 1))
  for n in got:
    for key in LOSS_KEYS:
      np.testing.assert_allclose(got[n][key], ref[n][key], rtol=2e-4, atol=2e-5,
                                 err_msg=f"{key} at step {n}")
  assert steps_on_disk(workdir)[0] == [6, 9, 12]
  mine, _ = restore_all(workdir, jax.devices()[:1])
  theirs, _ = restore_all(ref_dir, jax.devices()[:1])
  for k, v in leaves(mine["params"]).items():
    np.testing.assert_allclose(v, leaves(theirs["params"])[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_killing_one_process_stops_the_other(cifar_jpeg_folder, tmp_path):
  """SIGKILL of process 1 mid-training: process 0 exits non-zero, with an error, in bounded time."""
  procs = start_pair(tmp_path / "run", cifar_jpeg_folder, "--config.num_train_steps=100000",
                     "--distributed_heartbeat_timeout_seconds=10", port=free_port())
  # metrics.jsonl appears once step 2 is logged: both processes are in the training loop.
  wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists(), procs[0], what="step 2")
  procs[1].kill()
  killed_at = time.time()
  rc = finish(procs[0], timeout=150)
  elapsed = time.time() - killed_at
  log = output(procs[0])
  assert rc != 0, log[-3000:]
  assert elapsed < 120, f"process 0 took {elapsed:.0f}s to stop"  # heartbeat 10 s + slack
  # Its next collective fails (status 5, one line), or, if it was not in one, the
  # coordination service ends it once the heartbeats stop.
  lost = "error: lost contact with another process of this run (" in log and rc == 5
  terminated = ("Terminating process because the JAX distributed service detected fatal errors"
                in log and "stopped sending heartbeats" in log)
  assert lost or terminated, log[-3000:]
  assert "Traceback" not in log or terminated, log[-3000:]
