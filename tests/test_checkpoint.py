"""Checkpoints: a broken newest step is named, with the intact older step and how to use it."""
import logging
import pathlib
import re
import shlex
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixsiam_jax import checkpoint, errors, sharding
from mixsiam_jax.program_options import from_config
from tests.helpers import snapshot


def tree(value):
  return {"step": jnp.int32(value), "params": {"w": jnp.full((32, 32), value, jnp.float32)},
          "batch_stats": {"mean": jnp.full((8,), value, jnp.float32)}}


def saved_run(workdir, steps):
  manager = checkpoint.create_manager(checkpoint.checkpoint_dir(str(workdir)), async_save=False)
  for step in steps:
    checkpoint.save(manager, step, tree(step), {"image_size": 16})
  manager.close()
  return pathlib.Path(checkpoint.checkpoint_dir(str(workdir)))


def truncate(step_dir):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "ocdbt" in str(p)]
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def restore_newest(directory):
  manager = checkpoint.create_manager(str(directory), async_save=False)
  try:
    restored, meta = checkpoint.restore(manager, manager.latest_step(), tree(0))
    return int(restored["step"]), np.asarray(restored["params"]["w"]), meta
  finally:
    manager.close()


def test_checkpoint_errors_are_user_errors():
  assert issubclass(checkpoint.CheckpointError, errors.UserError)


def test_broken_newest_names_the_intact_step_and_the_way_to_it(tmp_path):
  directory = saved_run(tmp_path, (3, 6))
  truncate(directory / "6")
  with pytest.raises(checkpoint.CheckpointError) as err:
    restore_newest(directory)
  message = str(err.value)
  assert "\n" not in message
  assert f"checkpoint {directory}/6 is unreadable or incomplete" in message
  assert "step 3 is intact" in message
  # The advice works as written.
  command = re.search(r"\((mv [^)]*)\)", message).group(1)
  subprocess.run(shlex.split(command), check=True)
  step, w, meta = restore_newest(directory)
  assert step == 3 and np.all(w == 3) and meta == {"image_size": 16}


def test_the_only_checkpoint_broken_says_so(tmp_path):
  directory = saved_run(tmp_path, (3,))
  truncate(directory / "3")
  with pytest.raises(checkpoint.CheckpointError, match="it is the only checkpoint: move it away"):
    restore_newest(directory)


def test_restore_replicated_names_the_intact_step(tmp_path):
  directory = saved_run(tmp_path, (3, 6))
  truncate(directory / "6")
  mesh = sharding.create_mesh(jax.devices()[:1])
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"checkpoints/6 is unreadable .*step 3 is intact"):
    checkpoint.restore_replicated(str(tmp_path), mesh)
  # An explicit older step is still restored.
  restored, meta, step = checkpoint.restore_replicated(str(tmp_path), mesh, step=3)
  assert step == 3 and np.all(np.asarray(restored["params"]["w"]) == 3)
  assert meta == {"image_size": 16}


def test_latest_step_reads_without_creating(tmp_path):
  assert checkpoint.latest_step(str(tmp_path / "checkpoints")) == 0
  assert not (tmp_path / "checkpoints").exists()
  directory = saved_run(tmp_path, (3, 6))
  before = sorted(p.name for p in directory.iterdir())
  assert checkpoint.latest_step(str(directory)) == 6
  assert sorted(p.name for p in directory.iterdir()) == before


def test_first_save_of_a_replicated_state_compiles_nothing(tmp_path):
  """A preemption save may be a process's first: it must not compile XLA programs.

  Orbax's replica-parallel default compiles a slicing program per array shape
  and replica at the first save (40 programs, 2.1 s for the tree below).
  """
  mesh = sharding.create_mesh(jax.devices())
  assert mesh.devices.size == 8
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
  rng = np.random.default_rng(0)
  shapes = [(3, 3, 3, 16), (16,), (3, 3, 16, 32), (32,), (64, 32), (1, 7)]
  host = {f"w{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
  host["rows"] = rng.normal(size=(16, 5)).astype(np.float32)
  state = {k: jax.device_put(v, split if k == "rows" else replicated) for k, v in host.items()}
  compiles = []

  def count(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(str(tmp_path)))
    checkpoint.save(manager, 1, state, {"image_size": 16})
    manager.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert compiles == []
  restored, meta = checkpoint.restore(manager, 1, state)
  manager.close()
  assert meta == {"image_size": 16}
  for key, value in host.items():
    np.testing.assert_array_equal(np.asarray(restored[key]), value)
  assert restored["rows"].sharding.spec == split.spec


def test_a_stray_or_renamed_newest_step_directory_is_read_and_refused(tmp_path):
  directory = saved_run(tmp_path, (3, 6))
  (directory / "99").mkdir()
  with pytest.raises(checkpoint.CheckpointError) as err:
    checkpoint.latest_step(str(directory))
  message = str(err.value)
  assert "\n" not in message
  assert message == (
      f"checkpoint {directory}/99 is unreadable or incomplete (the directory is empty); step 6 "
      f"is intact: move the broken step away (mv {directory}/99 {tmp_path}/broken_checkpoint_99) "
      "and rerun the same command to use step 6.")
  (directory / "99").rmdir()
  shutil.copytree(directory / "6", directory / "99")  # a complete step under another name
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"checkpoints/99 is unreadable or incomplete \(it holds the state of "
                           r"step 6: a renamed or copied step directory\); step 6 is intact"):
    checkpoint.latest_step(str(directory))
  shutil.rmtree(directory / "99")
  assert checkpoint.latest_step(str(directory)) == 6


def test_read_only_managers_do_not_announce_themselves_but_real_warnings_pass(tmp_path, caplog):
  directory = saved_run(tmp_path, (3,))
  (directory / "7").mkdir()
  with caplog.at_level(logging.INFO):
    with pytest.raises(checkpoint.CheckpointError):
      checkpoint.latest_step(str(directory))
    checkpoint.create_manager(str(directory), read_only=True, async_save=False).close()
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if "read only" in m], messages
  assert any("Metadata file does not exist" in m and "/7/" in m for m in messages), messages
  assert logging.getLogger("absl").filters == []  # nothing left installed


@pytest.mark.slow
def test_pretraining_refuses_a_stray_step_directory_and_resumes_once_it_is_moved(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(tiny_pretrained, run)
  (run / "checkpoints" / "99").mkdir()
  before = snapshot(run)
  config = cifar10.get_config("tiny")
  config.dataset = config.eval_dataset = f"folder:{cifar_jpeg_folder}"
  config.async_checkpointing = False
  with pytest.raises(checkpoint.CheckpointError) as err:
    pretrain.train_and_evaluate(from_config(config), str(run))
  message = str(err.value)
  assert message.startswith(f"checkpoint {run}/checkpoints/99 is unreadable or incomplete "
                            "(the directory is empty); step 6 is intact")
  assert snapshot(run) == before and (run / "checkpoints" / "99").is_dir()
  subprocess.run(shlex.split(re.search(r"\((mv [^)]*)\)", message).group(1)), check=True)
  # Finished at step 6 of 6.
  assert pretrain.train_and_evaluate(from_config(config), str(run)) == {}
  assert (run / "broken_checkpoint_99").is_dir()


def test_a_file_where_the_checkpoints_directory_belongs_is_refused_in_one_line(tmp_path):
  directory = tmp_path / "checkpoints"
  directory.write_text("not a directory")
  for call in (lambda: checkpoint.latest_step(str(directory)),
               lambda: checkpoint.create_manager(str(directory))):
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"^{directory} is a file, not a checkpoint directory"):
      call()
