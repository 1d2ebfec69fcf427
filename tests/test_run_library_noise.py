"""Tests of run/library_noise.py: start-up notices held back, Orbax's echoes kept to --v=1."""
import asyncio
import gc
import logging as logging_lib
import os
import types

import pytest
from absl import logging

from mixsiam_jax.run import library_noise


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
  hook = library_noise.drop_abandoned_reads(passed.append)
  hook(closed_loop_echo())
  assert passed == []
  other = types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("other"),
                                exc_traceback=None, err_msg=None, object=None)
  hook(other)
  assert passed == [other]


def unretrieved_task_records():
  """The records asyncio logs for a task whose exception nobody retrieved, as after a failed restore."""
  records = []
  handler = logging_lib.Handler()
  handler.emit = records.append
  handler.addFilter(library_noise.QuietLibraryInfo())
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
  # The absl logger's own level, restored as it was (often unset): set_verbosity(get_verbosity())
  # would pin it, and later tests' caplog would see no INFO record of absl.
  absl_logger = logging_lib.getLogger("absl")
  level = absl_logger.level
  logging.set_verbosity(logging.DEBUG)
  try:
    records = unretrieved_task_records()
  finally:
    absl_logger.setLevel(level)
  assert len(records) == 1
  assert "DATA_LOSS" in str(records[0].exc_info[1])


def test_held_back_notices_are_all_kept_when_the_block_fails(capfd):
  notice = library_noise.TPU_SEARCH_NOTICES[0]
  with library_noise.start_notices_dropped([notice]):
    os.write(2, f"{notice} (dropped)\nkept\n".encode())
  assert capfd.readouterr().err == "kept\n"
  with pytest.raises(RuntimeError, match="no backend"):
    with library_noise.start_notices_dropped([notice], drop=lambda: 1 / 0):
      os.write(2, f"{notice} (explains the error)\n".encode())
      raise RuntimeError("no backend")
  assert capfd.readouterr().err == f"{notice} (explains the error)\n"
