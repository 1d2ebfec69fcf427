"""Checkpoints: a broken newest step is named, with the intact older step and how to use it."""
import json
import logging
import pathlib
import re
import shlex
import shutil
import subprocess
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mixsiam_jax import errors, sharding
from mixsiam_jax.checkpoints import checksums, faults, reader, storage
from mixsiam_jax.options.programs import from_config
from tests.helpers import snapshot


def tree(value):
  return {"step": jnp.int32(value), "params": {"w": jnp.full((32, 32), value, jnp.float32)},
          "batch_stats": {"mean": jnp.full((8,), value, jnp.float32)}}


def random_tree(value):
  """Like tree(value), with random values: a flipped byte of their data decodes silently."""
  rng = np.random.default_rng(value)
  return {"step": jnp.int32(value),
          "params": {"w": jnp.asarray(rng.normal(size=(32, 32)).astype(np.float32))},
          "batch_stats": {"mean": jnp.asarray(rng.normal(size=(8,)).astype(np.float32))}}


def saved_run(workdir, steps, make=tree):
  manager = storage.create_manager(storage.checkpoint_dir(str(workdir)), async_save=False)
  for step in steps:
    storage.save(manager, step, make(step), {"image_size": 16})
  manager.close()
  return pathlib.Path(storage.checkpoint_dir(str(workdir)))


def flip_a_byte_in_the_largest_array_file(step_dir, changed=None):
  """Inverts a byte of a file of array data (OCDBT's d/) of a step, the largest if it serves.

  Args:
    step_dir: the step directory.
    changed: None to flip the middle byte; else a function that restores the
      arrays it cares about without verifying their checksums and says whether
      they restored silently with other values: the first of a few positions
      that makes it true is kept (which arrays lie where in the file varies
      from run to run, since Orbax writes them concurrently).
  """
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  # Largest first; the arrays a caller restores may lie in any of them (written concurrently).
  for path in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
    original = path.read_bytes()
    for fraction in (0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.1, 0.9):
      data = bytearray(original)
      data[int(len(data) * fraction)] ^= 0xFF
      path.write_bytes(bytes(data))
      if changed is None or changed():
        return
    path.write_bytes(original)
  raise AssertionError(f"no flipped byte of the array files of {step_dir} changed the arrays")


def restores_silently_with_other_values(restore, intact):
  """Whether ``restore()`` (checksums not verified) works and gives another tree than ``intact``."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(checksums, "verify", lambda restored, recorded: 0)
    try:
      restored = restore()
    except Exception:  # pylint: disable=broad-except  (the flip broke the file's format)
      return False
  return not all(np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(intact)))


def truncate(step_dir):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "ocdbt" in str(p)]
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def restore_newest(directory):
  manager = storage.create_manager(str(directory), async_save=False)
  try:
    restored, meta = storage.restore(manager, manager.latest_step(), tree(0))
    return int(restored["step"]), np.asarray(restored["params"]["w"]), meta
  finally:
    manager.close()


def test_checkpoint_errors_are_user_errors():
  assert issubclass(storage.CheckpointError, errors.UserError)


def test_broken_newest_names_the_intact_step_and_the_way_to_it(tmp_path):
  directory = saved_run(tmp_path, (3, 6))
  truncate(directory / "6")
  with pytest.raises(storage.CheckpointError) as err:
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
  with pytest.raises(storage.CheckpointError, match="it is the only checkpoint: move it away"):
    restore_newest(directory)


def test_latest_step_reads_without_creating(tmp_path):
  assert storage.latest_step(str(tmp_path / "checkpoints")) == 0
  assert not (tmp_path / "checkpoints").exists()
  directory = saved_run(tmp_path, (3, 6))
  before = sorted(p.name for p in directory.iterdir())
  assert storage.latest_step(str(directory)) == 6
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
    manager = storage.create_manager(storage.checkpoint_dir(str(tmp_path)))
    storage.save(manager, 1, state, {"image_size": 16})
    manager.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert compiles == []
  restored, meta = storage.restore(manager, 1, state)
  manager.close()
  assert meta == {"image_size": 16}
  for key, value in host.items():
    np.testing.assert_array_equal(np.asarray(restored[key]), value)
  assert restored["rows"].sharding.spec == split.spec


def test_a_stray_or_renamed_newest_step_directory_is_read_and_refused(tmp_path):
  directory = saved_run(tmp_path, (3, 6))
  (directory / "99").mkdir()
  with pytest.raises(storage.CheckpointError) as err:
    storage.latest_step(str(directory))
  message = str(err.value)
  assert "\n" not in message
  assert message == (
      f"checkpoint {directory}/99 is unreadable or incomplete (the directory is empty); step 6 "
      f"is intact: move the broken step away (mv {directory}/99 {tmp_path}/broken_checkpoint_99) "
      "and rerun the same command to use step 6.")
  (directory / "99").rmdir()
  shutil.copytree(directory / "6", directory / "99")  # a complete step under another name
  with pytest.raises(storage.CheckpointError,
                     match=r"checkpoints/99 is unreadable or incomplete \(it holds the state of "
                           r"step 6: a renamed or copied step directory\); step 6 is intact"):
    storage.latest_step(str(directory))
  shutil.rmtree(directory / "99")
  assert storage.latest_step(str(directory)) == 6


def test_read_only_managers_do_not_announce_themselves_but_real_warnings_pass(tmp_path, caplog):
  directory = saved_run(tmp_path, (3,))
  (directory / "7").mkdir()
  with caplog.at_level(logging.INFO):
    with pytest.raises(storage.CheckpointError):
      storage.latest_step(str(directory))
    storage.create_manager(str(directory), read_only=True, async_save=False).close()
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
  with pytest.raises(storage.CheckpointError) as err:
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
  for call in (lambda: storage.latest_step(str(directory)),
               lambda: storage.create_manager(str(directory))):
    with pytest.raises(storage.CheckpointError,
                       match=rf"^{directory} is a file, not a checkpoint directory"):
      call()


def test_a_flipped_byte_in_an_array_of_the_newest_step_is_named_with_the_intact_step(
    tmp_path, monkeypatch):
  directory = saved_run(tmp_path, (3, 6), make=random_tree)
  flip_a_byte_in_the_largest_array_file(directory / "6")
  # The byte lies in the array's data: unverified, step 6 restores silently, with other values.
  with monkeypatch.context() as patch:
    patch.setattr(checksums, "verify", lambda restored, recorded: 0)
    step, w, _ = restore_newest(directory)
  assert step == 6 and np.any(w != np.asarray(random_tree(6)["params"]["w"]))
  with pytest.raises(storage.CheckpointError) as err:
    restore_newest(directory)
  message = str(err.value)
  where = re.escape(str(directory))
  assert re.fullmatch(
      rf"checkpoint {where}/6 is corrupt \(array params/w does not match the checksum recorded "
      r"when it was saved: CRC-32 [0-9a-f]{8}, saved [0-9a-f]{8}\); step 3 is intact: move the "
      rf"broken step away \(mv {where}/6 {re.escape(str(tmp_path))}/broken_checkpoint_6\) and "
      r"rerun the same command to use step 3\.", message), message
  mesh = sharding.create_mesh(jax.devices()[:1])
  with pytest.raises(storage.CheckpointError, match=r"checkpoints/6 is corrupt .*step 3 is "):
    reader.restore_replicated(str(tmp_path), mesh)
  subprocess.run(shlex.split(re.search(r"\((mv [^)]*)\)", message).group(1)), check=True)
  step, w, meta = restore_newest(directory)
  assert step == 3 and meta == {"image_size": 16}
  np.testing.assert_array_equal(w, np.asarray(random_tree(3)["params"]["w"]))


def test_every_array_is_verified_and_the_checksums_stay_out_of_the_metadata(tmp_path):
  params = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4)}
  state = {"step": jnp.int32(3), "params": params, "batch_stats": {"mean": jnp.ones(4)},
           "opt_state": optax.sgd(0.1, momentum=0.9).init(params),
           "rng": jax.random.key_data(jax.random.key(0))}
  manager = storage.create_manager(storage.checkpoint_dir(str(tmp_path)), async_save=False)
  storage.save(manager, 3, state, {"image_size": 16})
  saved_meta = json.loads((tmp_path / "checkpoints" / "3" / "meta" / "metadata").read_text())
  recorded = saved_meta.pop(checksums.KEY)
  assert saved_meta == {"image_size": 16}
  assert recorded["algorithm"] == "crc32"
  assert sorted(recorded["arrays"]) == ["batch_stats/mean", "opt_state/0/trace/w", "params/w",
                                        "rng", "step"]
  assert recorded["arrays"]["step"] == f"int32:{zlib.crc32(np.int32(3).tobytes()):08x}"
  restored, meta = storage.restore(manager, 3, state)
  assert meta == storage.read_meta(manager, 3) == {"image_size": 16}
  assert checksums.verify(restored, recorded) == 5
  manager.close()
  # The probes' restore builds its target from Orbax's metadata: the same names.
  everything, meta, _ = reader.restore_replicated(
      str(tmp_path), sharding.create_mesh(), items=tuple(state))
  assert meta == {"image_size": 16}
  assert checksums.verify(everything, recorded) == 5


def test_a_checkpoint_saved_without_checksums_restores_with_a_one_line_warning(tmp_path, caplog):
  directory = storage.checkpoint_dir(str(tmp_path))
  manager = storage.create_manager(directory, async_save=False)
  # What storage.save wrote before it recorded checksums.
  manager.save(3, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree(3)),
                                          meta=ocp.args.JsonSave({"image_size": 16})))
  manager.close()
  with caplog.at_level(logging.WARNING):
    step, w, meta = restore_newest(directory)
    restored, replicated_meta, _ = reader.restore_replicated(
        str(tmp_path), sharding.create_mesh(jax.devices()[:1]))
  assert step == 3 and np.all(w == 3) and meta == replicated_meta == {"image_size": 16}
  assert np.all(np.asarray(restored["params"]["w"]) == 3)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert warnings == [f"Checkpoint {directory}/3 records no checksums of its arrays (written by "
                      "an earlier version): restored without verifying them."] * 2


def _classifier_tree(classes, width=4, probe_key="online_probe"):
  """A pretraining-like state with an online probe, or a linear probe's (probe_key=None)."""
  head = {"kernel": jnp.zeros((width, classes)), "bias": jnp.zeros((classes,))}
  params = {"backbone": {"kernel": jnp.zeros((3, width))}, probe_key: head} if probe_key else head
  return {"step": jnp.int32(3), "params": params, "batch_stats": {}}


@pytest.mark.parametrize("probe_key,key", [("online_probe", "['params']['online_probe']['bias']"),
                                           (None, "['params']['bias']")])
def test_a_classifier_of_another_class_count_names_the_data_set(tmp_path, probe_key, key):
  manager = storage.create_manager(storage.checkpoint_dir(str(tmp_path)), async_save=False)
  storage.save(manager, 3, _classifier_tree(10, probe_key=probe_key), {})
  with pytest.raises(storage.CheckpointError) as err:
    storage.restore(manager, 3, _classifier_tree(9, probe_key=probe_key))
  manager.close()
  assert str(err.value) == (
      f"checkpoint {tmp_path}/checkpoints/3: {key} has shape (10,), the model expects (9,): the "
      "data set has 9 classes, the checkpoint was trained with 10. Use the data set it was "
      "trained with or a fresh --workdir.")


def test_a_model_of_another_width_is_named_as_such_even_with_another_class_count():
  def shapes(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  for probe_key, key in (("online_probe", "['params']['backbone']['kernel']"),
                         (None, "['params']['kernel']")):
    message = faults.incompatibility(
        shapes(_classifier_tree(10, width=4, probe_key=probe_key)),
        shapes(_classifier_tree(9, width=8, probe_key=probe_key)), "/w/checkpoints/3")
    assert message.startswith(f"checkpoint /w/checkpoints/3: {key} has shape "), message
    assert message.endswith("(different depth or width?). Use the config it was trained with or a "
                            "fresh --workdir."), message
