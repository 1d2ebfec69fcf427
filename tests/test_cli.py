"""main.py's plumbing: user errors in one line, bugs keep their traceback, echoes dropped."""
import asyncio
import gc
import logging as logging_lib
import signal
import sys
import types

import pytest
from absl import flags, logging
from ml_collections import config_flags

from mixsiam_jax import checkpoint, cli, errors, loop, stopping


def test_user_errors_end_in_one_line_and_bugs_keep_their_traceback():
  with pytest.raises(SystemExit) as exit_:
    with cli.one_line_errors():
      raise errors.UserError("batch_size=12 must be divisible by 8 devices.")
  assert exit_.value.code == "error: batch_size=12 must be divisible by 8 devices."
  with pytest.raises(ValueError, match="a bug"):  # e.g. JAX's own ValueError: not a user error
    with cli.one_line_errors():
      raise ValueError("a bug")


def parse(monkeypatch, *args):
  argv = ["main.py", *args]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
  with pytest.raises(SystemExit) as exit_:
    cli.parse_flags(argv, flag_values)
  return exit_.value.code


def test_config_mistakes_are_one_line(monkeypatch):
  assert parse(monkeypatch, "--config=configs/cifar10.py:tiny", "--config.modle.depth=18") == (
      "error: --config.modle.depth=18: configs/cifar10.py:tiny has no field 'modle'. "
      'Did you mean "model" instead of "modle"?')
  assert parse(monkeypatch, "--config=configs/cifar10.py:tiny", "--config.model.depthx=4") == (
      "error: --config.model.depthx=4: configs/cifar10.py:tiny has no field 'depthx'. "
      'Did you mean "depth" instead of "depthx"?')
  assert parse(monkeypatch, "--config=configs/cifar10.py:tiny", "--config.data.prefetch=3") == (
      "error: --config.data.prefetch=3: configs/cifar10.py:tiny has no field 'prefetch'. "
      "It was renamed: use --config.data.device_prefetch.")
  assert parse(monkeypatch, "--config=configs/nosuch.py") == (
      "error: --config=configs/nosuch.py could not be loaded: "
      "[Errno 2] No such file or directory: 'configs/nosuch.py'")
  assert parse(monkeypatch, "--config=configs/cifar10.py:huge") == (
      "error: flag --config=configs/cifar10.py:huge: ValueError: Unknown variant 'huge' of "
      "configs/cifar10.py; use '' or 'tiny'.")


def closed_loop_echo():
  """What TensorStore reports when a read finishes after Orbax closed its event loop."""
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as e:
    return types.SimpleNamespace(exc_type=RuntimeError, exc_value=e,
                                 exc_traceback=e.__traceback__, err_msg=None, object=None)
  raise AssertionError("a closed loop accepted a callback")


def test_only_the_echoes_of_a_failed_restore_are_dropped():
  passed = []
  hook = cli.drop_abandoned_reads(passed.append)
  hook(closed_loop_echo())
  assert passed == []
  other = types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("other"),
                                exc_traceback=None, err_msg=None, object=None)
  hook(other)
  assert passed == [other]


def _raise(error):
  def program():
    raise error
  return program


@pytest.mark.parametrize("program,status,last_line", [
    (lambda: None, 0, None),
    (_raise(stopping.Stopped(7, signal.SIGTERM)), 0,
     "preempted (SIGTERM) at step 7, checkpoint saved; rerun the same command to resume."),
    (_raise(stopping.Stopped(7, signal.SIGINT)), 130,
     "interrupted (Ctrl-C) at step 7, checkpoint saved; rerun the same command to resume."),
    (_raise(errors.UserError("batch_size=12 must be divisible by 8.")), 1,
     "error: batch_size=12 must be divisible by 8."),
    (_raise(loop.TrainingError("non-finite loss at step 3.")), 3,
     "error: non-finite loss at step 3."),
    (_raise(checkpoint.CheckpointSaveError("cannot save checkpoint 4 in /w: no space.")), 4,
     "error: cannot save checkpoint 4 in /w: no space."),
    (_raise(SystemExit("error: --config.x: no such field")), 1,
     "error: --config.x: no such field"),
    (_raise(KeyError("a bug")), 70,
     "error: unexpected KeyError (a bug; the traceback is above). The newest checkpoint is "
     "intact: rerun the same command to resume."),
])
def test_every_way_out_of_a_program_has_its_exit_status_and_one_line(capsys, program, status,
                                                                    last_line):
  assert cli.run_program(program) == status
  err = capsys.readouterr().err
  if last_line is None:
    assert err == ""
  else:
    assert err.splitlines()[-1] == last_line
    assert ("Traceback" in err) == (status == 70)


def unretrieved_task_records():
  """The records asyncio logs for a task whose exception nobody retrieved, as after a failed restore."""
  records = []
  handler = logging_lib.Handler()
  handler.emit = records.append
  handler.addFilter(cli.QuietLibraryInfo())
  asyncio_logger = logging_lib.getLogger("asyncio")
  asyncio_logger.addHandler(handler)
  try:
    loop = asyncio.new_event_loop()

    async def failing_read():
      raise ValueError("DATA_LOSS: Error reading params.x/.zarray")

    task = loop.create_task(failing_read())
    loop.run_until_complete(asyncio.sleep(0))  # the task runs and fails; nobody awaits it
    loop.close()
    del task
    gc.collect()
  finally:
    asyncio_logger.removeHandler(handler)
  return records


def test_unretrieved_task_errors_of_a_failed_restore_are_shown_only_at_debug_verbosity():
  assert unretrieved_task_records() == []
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.DEBUG)
  try:
    records = unretrieved_task_records()
  finally:
    logging.set_verbosity(verbosity)
  assert len(records) == 1
  assert "DATA_LOSS" in str(records[0].exc_info[1])
