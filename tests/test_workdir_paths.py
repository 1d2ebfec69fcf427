"""Tests of mixsiam_jax/workdir/paths.py: a workdir that stops accepting writes ends in one line."""
import errno
import os

import pytest
import tensorflow as tf

from mixsiam_jax.workdir import paths
from tests.test_main import TINY, errors_of, run_main, small_disk


def _newest(step):
  return lambda: step


def test_a_full_disk_names_the_file_the_free_space_and_the_newest_checkpoint(tmp_path):
  error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))
  message = paths.write_failure_message(error, str(tmp_path), _newest(7))
  assert message.startswith(f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on "
                            "device, ")
  assert " free; the newest intact checkpoint is step 7. " in message and "\n" not in message
  nothing = paths.write_failure_message(
      OSError(errno.EROFS, "Read-only file system"), str(tmp_path), _newest(0))
  assert nothing.startswith(f"cannot write into the workdir {tmp_path}: Read-only file system")
  assert "no checkpoint was written yet" in nothing


def test_tensorboards_write_failure_is_named(tmp_path):
  error = tf.errors.ResourceExhaustedError(None, None, "FlushSummaryWriter: ... No space left "
                                                       "on device")
  message = paths.write_failure_message(error, str(tmp_path), _newest(3))
  assert message.startswith(f"cannot write the TensorBoard event file in {tmp_path}: No space "
                            "left on device")


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "/elsewhere/cache.bin"),  # not the workdir's
    OSError(errno.ENOENT, "No such file or directory", "x"),  # not a failed write
    OSError(errno.EACCES, "Permission denied"),  # names no file: could be anything's
    ValueError("No space left on device"),  # not an OS error
])
def test_other_errors_pass_through(tmp_path, error):
  assert paths.write_failure_message(error, str(tmp_path), _newest(1)) is None
  with pytest.raises(type(error)):
    with paths.write_failures_end_the_run(str(tmp_path), _newest(1)):
      raise error


def test_the_context_raises_one_error_with_status_4(tmp_path):
  def broken():
    raise RuntimeError("checkpoints unreadable")
  with pytest.raises(paths.WorkdirWriteError) as raised:
    with paths.write_failures_end_the_run(str(tmp_path), broken):
      raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "config.json"))
  assert raised.value.exit_status == 4
  assert "the newest checkpoint could not be read (checkpoints unreadable)" in str(raised.value)


@pytest.mark.slow
def test_an_8_kib_workdir_ends_in_one_line_with_status_4(cifar_jpeg_folder, tmp_path):
  with small_disk(tmp_path / "disk", "8k") as disk:
    result = run_main(*TINY, f"--config.dataset=folder:{cifar_jpeg_folder}",
                      f"--workdir={disk / 'run'}", timeout=180)
    assert result.returncode == 4, result.stderr[-3000:]
    lines = errors_of(result)
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write "), lines
    assert "No space left on device" in lines[0] and "no checkpoint was written yet" in lines[0]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(disk / "run" / ".lock")
