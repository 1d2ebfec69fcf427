"""Tests of mixsiam_jax/run/stopping.py: signals become stop requests, never lost exceptions."""
import gc
import os
import signal
import sys
import threading
import time

import pytest

from mixsiam_jax.run import stopping


def test_a_signal_inside_a_gc_callback_interrupts_the_wait_after_the_callback(monkeypatch):
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  in_callback = []

  def callback(phase, info):
    del info
    # Only a collection of the main thread: another thread's would signal at any moment.
    main = threading.current_thread() is threading.main_thread()
    if phase == "start" and not in_callback and main:
      in_callback.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):  # bytecodes at which Python runs the pending handler
        pass
      in_callback.append(False)

  gc.callbacks.append(callback)
  try:
    with stopping.StopRequest(num_processes=1) as stop:
      with pytest.raises(stopping.Interrupted) as interrupted:
        with stop.waiting():
          gc.collect()
          time.sleep(2)  # the signal, delivered again, ends this wait
  finally:
    gc.callbacks.remove(callback)
  # The callback ran to its end (nothing was raised inside it), then the wait was interrupted.
  assert in_callback == [True, False] and not unraisable
  assert interrupted.value.signum == signal.SIGTERM and stop.signum == signal.SIGTERM


def test_inside_gc_callback_looks_at_the_callers_of_the_frame():
  frames = []

  def callback(phase, info):
    del info
    if phase == "start" and not frames:
      frames.append(sys._getframe())  # pylint: disable=protected-access

  gc.callbacks.append(callback)
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(callback)
  gc.callbacks.append(callback)
  try:
    assert stopping.inside_gc_callback(frames[0])
    assert not stopping.inside_gc_callback(sys._getframe())  # pylint: disable=protected-access
  finally:
    gc.callbacks.remove(callback)


class _SignalsWhenCollected:
  """Part of a reference cycle: its finalizer runs inside a garbage collection."""

  def __init__(self, log):
    self.log, self.cycle = log, self

  def __del__(self):
    self.log.append(True)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecodes at which Python runs the pending handler
      pass
    self.log.append(False)


def test_a_signal_inside_a_finalizer_interrupts_the_wait_after_the_collection(monkeypatch):
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  log = []
  with stopping.StopRequest(num_processes=1) as stop:
    with pytest.raises(stopping.Interrupted):
      with stop.waiting():
        _SignalsWhenCollected(log)
        gc.collect()
        time.sleep(2)
  assert log == [True, False] and not unraisable and stop.signum == signal.SIGTERM
  assert stop._track_collection not in gc.callbacks  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# Before the first step: a helper thread ends the run, whatever the main thread does.
# ---------------------------------------------------------------------------
def _heard(received):
  def on_signal(signum):
    received.append((signum, threading.current_thread().name, time.monotonic()))
  return on_signal


def test_a_signal_before_the_first_step_reaches_the_helper_at_once():
  received = []
  previous = signal.getsignal(signal.SIGTERM)
  with stopping.exit_before_first_step(_heard(received)):
    sent = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    # Busy in the main thread, as in a compile; nothing is raised here.
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
      sum(range(10000))
  assert [(signum, thread) for signum, thread, _ in received] == [
      (signal.SIGTERM, "stop-before-first-step")]
  assert received[0][2] - sent < 2.0
  assert signal.getsignal(signal.SIGTERM) == previous  # restored on exit
  assert signal.set_wakeup_fd(-1) == -1  # and the wakeup fd too


def test_the_loop_handles_signals_once_the_first_step_has_finished():
  received = []
  with stopping.exit_before_first_step(_heard(received)):
    with stopping.StopRequest(num_processes=1) as stop:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.2)
      assert stop.signum is None  # before the first step, the loop leaves it to the helper
      stopping.first_step_finished()
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.2)
      assert stop.requested(1) and stop.signum == signal.SIGTERM  # save, then stop
  assert [signum for signum, _, _ in received] == [signal.SIGTERM]


def test_after_the_first_step_outside_the_loop_a_signal_has_its_default_action():
  script = ("import os, signal, time\n"
            "from mixsiam_jax.run import stopping\n"
            "with stopping.exit_before_first_step(print):\n"
            "  stopping.first_step_finished()\n"
            "  os.kill(os.getpid(), signal.SIGTERM)\n"
            "  time.sleep(5)\n"
            "print('not reached')\n")
  import subprocess  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == -signal.SIGTERM and "not reached" not in result.stdout
