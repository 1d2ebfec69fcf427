"""Stop requests: SIGTERM (a preemption notice) and Ctrl-C (SIGINT) become a save, then a stop.

While the training loop runs, the first SIGTERM or SIGINT asks it to save a
checkpoint at the next step and stop (``Stopped``). A second SIGINT ends the
process at once: the first one restores the default action, so the kernel ends
the process even while it waits inside a library call.

Waiting. A Python signal handler runs only between bytecodes of the main thread,
so a program blocked on a batch from a stalled data source, or inside an
evaluation, would never reach the next step's check. Code that may wait long
runs inside ``StopRequest.waiting()``: a signal arriving there raises
``Interrupted`` in the main thread (the waits below it, such as the batch
queue of data/iterate.py, are interruptible Python waits), and the loop then
saves what it has and stops.

The garbage collector. A handler runs in whatever Python code the main thread
executes when the signal is processed, which can be a callback of the garbage
collector (JAX registers one) or a finalizer (``__del__``) it calls; an
exception raised there is printed as "Exception ignored in ..." and lost. A
signal that finds the main thread collecting garbage is delivered again a
moment later instead.

Before the first step. Until a program's first step has finished (imports, data
checks, restoring, the first compile: seconds to minutes, mostly inside
TensorFlow's or XLA's C++ code, where no Python handler runs), there is nothing
to save, and ``exit_before_first_step`` ends the process within a moment of a
stop signal: Python's C-level handler writes the signal to a wakeup file
descriptor that a helper thread reads, whatever the main thread is doing.

Several processes: they must stop at the same step (the save is collective),
so SIGTERM is left to JAX's preemption service (``jax.distributed.initialize``
installs it), which agrees on a step across hosts; a SIGINT is forwarded to it
as a SIGTERM of this process.
"""
import contextlib
import gc
import os
import signal
import threading
from typing import Callable, Iterator, Optional, Sequence

from absl import logging

# What each signal means to the user, in log lines and exit messages.
SIGNAL_MEANING = {signal.SIGTERM: "preempted (SIGTERM)", signal.SIGINT: "interrupted (Ctrl-C)"}


# Delay before a signal that arrived inside a garbage-collector callback is delivered again.
REDELIVERY_SECONDS = 0.01


def inside_gc_callback(frame) -> bool:
  """Whether ``frame`` (a signal handler's) is in a callback of the garbage collector.

  Args:
    frame: the frame the main thread was executing, or None.

  Returns:
    True if it or one of its callers is a function in gc.callbacks.
  """
  codes = {getattr(callback, "__code__", None) for callback in gc.callbacks} - {None}
  while frame is not None and codes:
    if frame.f_code in codes:
      return True
    frame = frame.f_back
  return False


# Set while a program runs under exit_before_first_step and its first step has not finished.
_BEFORE_FIRST_STEP = threading.Event()


def before_first_step_message(signum: int) -> str:
  """The one line for a stop signal that arrived before the first step finished."""
  return (f"{SIGNAL_MEANING.get(signum, f'signal {signum}')} before the first step finished: "
          "nothing was trained, so nothing is saved; rerun the same command to start again.")


@contextlib.contextmanager
def exit_before_first_step(on_signal: Callable[[int], None],
                           signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
                           ) -> Iterator[None]:
  """Within the block, until first_step_finished(), a stop signal calls ``on_signal`` at once.

  ``on_signal(signum)`` runs on a helper thread while the main thread may be
  anywhere (inside a compile, an import, a data check); it is expected to end
  the process (print its line, os._exit). Afterwards the signals belong to
  whatever handlers the program installs (StopRequest); the helper ignores them.
  Only the main thread can install this; elsewhere the block runs unchanged.

  Args:
    on_signal: called with the signal number, on the helper thread.
    signals: the signals it covers.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  # A Python handler must be installed for the C-level handler to write to the wakeup fd.
  previous = {signum: signal.signal(signum, _default_after_first_step) for signum in signals}
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  _BEFORE_FIRST_STEP.set()
  threading.Thread(target=_watch, args=(read_fd, on_signal), name="stop-before-first-step",
                   daemon=True).start()
  try:
    yield
  finally:
    _BEFORE_FIRST_STEP.clear()
    signal.set_wakeup_fd(previous_fd)
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    os.close(write_fd)  # The helper reads end-of-file and ends.


def first_step_finished() -> None:
  """Tells exit_before_first_step that there is something to save from now on."""
  _BEFORE_FIRST_STEP.clear()


def _default_after_first_step(signum, frame) -> None:
  """The main thread's handler: before the first step the helper acts; after it (outside
  the loop's own handlers) the signal's default action ends the process, as without the block."""
  del frame
  if not _BEFORE_FIRST_STEP.is_set():
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _watch(read_fd: int, on_signal: Callable[[int], None]) -> None:
  """Reads signal numbers from the wakeup fd until it closes; acts before the first step."""
  with os.fdopen(read_fd, "rb", buffering=0) as wakeups:
    while True:
      received = wakeups.read(1)
      if not received:
        return
      if _BEFORE_FIRST_STEP.is_set():
        on_signal(received[0])


class Interrupted(Exception):
  """A stop signal arrived while the program was waiting (for a batch, an evaluation).

  Attributes:
    signum: the signal.
  """

  def __init__(self, signum: int):
    super().__init__(f"{SIGNAL_MEANING.get(signum, signum)} while waiting")
    self.signum = signum


class Stopped(Exception):
  """The run saved its checkpoint and stopped on a signal; rerunning the command resumes it.

  Attributes:
    step: the step of the saved checkpoint (the run's newest).
    signum: the signal that asked for the stop.
  """

  def __init__(self, step: int, signum: int):
    super().__init__(f"{SIGNAL_MEANING.get(signum, f'signal {signum}')} at step {step}, "
                     "checkpoint saved; rerun the same command to resume.")
    self.step, self.signum = step, signum


class StopRequest:
  """Whether to save and stop, set by SIGTERM or SIGINT; a context manager installing the handlers.

  Handlers are installed only from the main thread (Python's rule) and the
  previous ones are restored on exit.
  """

  def __init__(self, num_processes: int):
    self._multiprocess = num_processes > 1
    self._signum: Optional[int] = None
    self._waiting = 0
    self._previous = {}
    self._collecting = False  # the main thread is inside a garbage collection

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    # First in the list: marked before the other callbacks of a collection run.
    gc.callbacks.insert(0, self._track_collection)
    signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    if self._previous:
      gc.callbacks.remove(self._track_collection)
    self._previous = {}

  def _track_collection(self, phase, info):
    del info
    if threading.current_thread() is threading.main_thread():
      self._collecting = phase == "start"

  @property
  def signum(self) -> Optional[int]:
    """The first stop signal received, or None."""
    return self._signum

  def _handle(self, signum, frame):
    if _BEFORE_FIRST_STEP.is_set():
      return  # exit_before_first_step's helper ends the process.
    if self._waiting and (self._collecting or inside_gc_callback(frame)):
      # Raising here would be printed and dropped: deliver the same signal again shortly.
      threading.Timer(REDELIVERY_SECONDS, signal.pthread_kill,
                      (threading.main_thread().ident, signum)).start()
      return
    first = self._signum is None
    if first:
      self._signum = signum
    if signum == signal.SIGINT:
      # A second Ctrl-C must work even while the main thread is inside a library call.
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      if first:
        logging.warning("Interrupted (Ctrl-C): saving a checkpoint and stopping; press Ctrl-C "
                        "again to stop at once without saving.")
      if self._multiprocess:
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service stops every process.
        return
    elif first:
      logging.warning("Received signal %d (%s): saving a checkpoint and stopping.", signum,
                      SIGNAL_MEANING.get(signum, "stop"))
    if self._waiting:
      raise Interrupted(signum)

  def requested(self, step: int) -> bool:
    """True if training should save at ``step`` and stop (the same step on every process)."""
    if self._multiprocess:
      # Imported here: main.py's command-line plumbing imports this module before JAX loads.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signum is not None

  @contextlib.contextmanager
  def waiting(self) -> Iterator[None]:
    """A block that a stop signal interrupts with ``Interrupted`` (single-process runs).

    Raises:
      Interrupted: on entry if a signal has already arrived, or when one arrives.
    """
    if self._signum is not None and not self._multiprocess:
      raise Interrupted(self._signum)
    self._waiting += 1
    try:
      yield
    finally:
      self._waiting -= 1
