"""What libraries print that the user of a command line should not see, and how it is held back.

At start-up TensorFlow (oneDNN notices on some CPUs) and libtpu (its search for
a TPU on hosts without one) write notices straight to file descriptor 2:
start_notices_dropped holds them back. Orbax logs dozens of INFO lines per
checkpoint and echoes a failed save or restore many times over:
QuietLibraryInfo (an absl log filter) and drop_abandoned_reads (a
sys.unraisablehook) keep those to --v=1. run/cli.py's quiet_start, import_tensorflow
and start_jax install them; the one-line errors stay the program's own.
"""
import contextlib
import logging as logging_lib
import os
import sys
import tempfile
import traceback
from typing import Callable, Iterator, Sequence

from absl import logging


# Lines that native libraries print to stderr while the program starts, whatever the input:
# TensorFlow's on CPUs where it turns oneDNN on (and absl's preamble before them), and
# libtpu's search for TPU hardware on hosts without one (when libtpu is installed).
TENSORFLOW_START_NOTICES = (
    "All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on",
    "This TensorFlow binary is optimized", "To enable the following instructions",
    "cpu_feature_guard.cc")
TPU_SEARCH_NOTICES = (
    "Failed to find host bounds for accelerator type", "could not determine TPU",
    "Logging before InitGoogle() is written to STDERR", "unexpected worker hostname",
    "=== Source Location Trace: ===", "libtpu_init_utils.cc", "Unable to initialize backend 'tpu'",
    "TPU initialization failed")


@contextlib.contextmanager
def start_notices_dropped(notices: Sequence[str],
                          drop: Callable[[], bool] = lambda: True) -> Iterator[None]:
  """Holds back what is written to stderr (file descriptor 2) inside the block.

  On exit the held-back lines are written out, except those containing one of
  ``notices`` when the block ended normally and ``drop()`` is true, so a
  start-up notice of a native library never stands between the user and the
  program's own one-line error. Anything else (a real warning) still appears,
  in order.

  Args:
    notices: substrings of the lines to drop.
    drop: decides on exit whether to drop them (e.g. only when no TPU was found).
  """
  sys.stderr.flush()
  # Held at the file descriptor, not sys.stderr: the notices come from C++ code
  # (TensorFlow, libtpu), which writes to descriptor 2 directly.
  saved = os.dup(2)
  held = tempfile.TemporaryFile()
  os.dup2(held.fileno(), 2)
  raised = True
  try:
    yield
    raised = False
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    held.seek(0)
    text = held.read().decode("utf-8", "replace")
    held.close()
    # After an error inside the block every line is kept: it may explain the error, and
    # drop() could fail the same way (e.g. no backend to ask).
    dropping = not raised and drop()
    kept = [line for line in text.splitlines(keepends=True)
            if not (dropping and any(n in line for n in notices))]
    if kept:
      sys.stderr.write("".join(kept))
      sys.stderr.flush()


class QuietLibraryInfo(logging_lib.Filter):
  """Drops Orbax's per-save INFO chatter (dozens of lines per checkpoint) and its error echoes.

  A failed save makes each of Orbax's threads log the same error with its
  traceback (hundreds of lines for a full disk); storage.py raises that
  error once, as one line, so Orbax's own ERROR records are shown only with
  --v=1. Orbax's warnings are kept. A failed restore leaves the reads of the
  other arrays as asyncio tasks whose errors nobody retrieves; asyncio logs
  each one when it is garbage-collected (at a moment that depends on the
  collector), after storage.py has reported the restore's error once, so
  those records are also shown only with --v=1. This program starts no asyncio
  tasks of its own: Orbax's are the only ones.
  """

  def filter(self, record):
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      return logging.level_debug()
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno >= logging_lib.ERROR:
      return logging.level_debug()
    return record.levelno >= logging_lib.WARNING


def drop_abandoned_reads(previous: Callable[..., None]) -> Callable[..., None]:
  """A sys.unraisablehook that drops the echoes of an Orbax restore that failed.

  When one array of a checkpoint cannot be read, Orbax's restore raises at once
  and closes its event loop while TensorStore still reads the other arrays;
  each of those reads, when it completes, fails to reach the closed loop and
  prints a 'RuntimeError: Event loop is closed' traceback after the real error
  has been reported. Exactly those are dropped (logged at debug level); every
  other unraisable exception goes to ``previous``.

  Args:
    previous: the hook to delegate to (sys.unraisablehook when installed).

  Returns:
    The hook.
  """
  def hook(unraisable):
    if _is_abandoned_read(unraisable.exc_value, unraisable.exc_traceback):
      logging.debug("Dropped a read of a failed checkpoint restore: %r", unraisable.exc_value)
      return
    previous(unraisable)
  return hook


def _is_abandoned_read(error: BaseException, tb) -> bool:
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    return False
  return any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(tb))
