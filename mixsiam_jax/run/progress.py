"""What a training loop tells the console: compilation, step 1, and a line at least every 30 s.

A run on a small machine can spend minutes compiling and minutes per step; the
logged metrics (every ``log_every_steps``) would leave it silent all that time.
ConsoleProgress prints, on process 0 only:
- when the step starts compiling and when it is compiled, with the seconds;
- step 1 of the run (the first finished step) with its loss;
- a progress line (step, steps/s, images/s, ETA, the last logged loss) at
  every log step and, from a helper thread, whenever nothing was printed for
  ``interval`` seconds, naming what the loop is doing then (compiling, waiting for
  a step, evaluating, saving).
The helper thread only reads numbers the loop has already fetched: it never
touches a device array, so it adds no synchronisation to the step.
"""
import contextlib
import threading
import time
from typing import Callable, Iterator, Optional

from absl import logging

# Seconds of silence after which a progress line is printed.
INTERVAL_SECONDS = 30.0


def format_seconds(seconds: float) -> str:
  """'45 s', '12m05s' or '3h07m' (days as hours)."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds} s"
  minutes, secs = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{secs:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


class ConsoleProgress:
  """Console lines of one loop run (module docstring); a context manager that owns a thread.

  Attributes:
    enabled: whether this process prints (process 0 of a run).
  """

  def __init__(self, *, start_step: int, num_steps: int, examples_per_step: Optional[int],
               enabled: bool, interval: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic):
    """Sets up the lines of a run of steps start_step + 1 .. num_steps.

    Args:
      start_step: the step the run resumes from (0 for a new run).
      num_steps: the last step.
      examples_per_step: global batch size, for images/s (None: not shown).
      enabled: print at all (False on processes other than 0).
      interval: seconds of silence before a progress line (None: INTERVAL_SECONDS).
      clock: monotonic seconds (tests pass a fake one).
    """
    self.enabled = enabled
    self._start_step, self._num_steps = start_step, num_steps
    self._examples = examples_per_step
    self._interval = INTERVAL_SECONDS if interval is None else interval
    self._clock = clock
    self._lock = threading.Lock()
    self._last_line = self._phase_start = clock()
    self._phase = "starting"
    self._first = None  # (step, time) when the first step of this run finished
    self._newest = None  # (step, time, loss) of the newest finished step
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self) -> "ConsoleProgress":
    if self.enabled:
      self._thread = threading.Thread(target=self._watch, name="console-progress", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  @contextlib.contextmanager
  def phase(self, what: str) -> Iterator[None]:
    """Names what the loop does inside the block ('evaluating', 'saving step 40', ...)."""
    with self._lock:
      before, before_start = self._phase, self._phase_start
      self._phase, self._phase_start = what, self._clock()
    try:
      yield
    finally:
      with self._lock:
        self._phase, self._phase_start = before, before_start

  @contextlib.contextmanager
  def compiling(self) -> Iterator[None]:
    """Around the first call of the step: says when XLA starts and how long it took."""
    self._print("Compiling the training step (XLA) ...")
    start = self._clock()
    with self.phase("compiling the training step"):
      yield
    self._print(f"Compiled the training step in {self._clock() - start:.1f} s.")

  def finished(self, step: int, loss: Optional[float] = None) -> None:
    """Records that ``step`` has finished on the devices (``loss``: its loss, if fetched)."""
    now = self._clock()
    with self._lock:
      first = self._first is None
      if first:
        self._first = (step, now)
      self._newest = (step, now, loss if loss is not None else
                      (self._newest[2] if self._newest else None))
    if first:
      self._print(self._status(prefix="first step done"))

  def log_step(self, step: int, loss: Optional[float] = None) -> None:
    """A log step, every step up to it finished: the progress line beside the logged metrics.

    Args:
      step: the log step.
      loss: the logged (window mean) loss, shown from here on.
    """
    self.finished(step, loss)
    self._print(self._status())

  def _status(self, prefix: str = "") -> str:
    with self._lock:
      newest, first = self._newest, self._first
      phase, phase_start = self._phase, self._phase_start
    if newest is None:
      return (f"step {self._start_step}/{self._num_steps}: {phase} "
              f"({format_seconds(self._clock() - phase_start)} so far).")
    step, at, loss = newest
    parts = [f"step {step}/{self._num_steps}"]
    if prefix:
      parts[0] += f" ({prefix})"
    if first is not None and step > first[0] and at > first[1]:
      rate = (step - first[0]) / (at - first[1])
      parts.append(f"{rate:.3g} steps/s")
      if self._examples:
        parts.append(f"{rate * self._examples:.4g} img/s")
      parts.append(f"ETA {format_seconds((self._num_steps - step) / rate)}")
    if loss is not None:
      parts.append(f"loss {loss:.4f}")
    line = ", ".join(parts)
    running = self._clock() - at
    if phase == "training" and step < self._num_steps and running >= self._interval / 3:
      line += f"; step {step + 1} running for {format_seconds(running)}"
    elif phase != "training":
      line += f"; now {phase} ({format_seconds(self._clock() - phase_start)})"
    return line + "."

  def _print(self, line: str) -> None:
    if not self.enabled:
      return
    with self._lock:
      self._last_line = self._clock()
    logging.info(line)

  def _watch(self) -> None:
    while not self._stop.wait(min(self._interval, 5.0)):
      with self._lock:
        silent = self._clock() - self._last_line >= self._interval
      if silent:
        self._print(self._status())

  def training(self) -> None:
    """The loop is dispatching and waiting for steps (the default phase once compiled)."""
    with self._lock:
      self._phase, self._phase_start = "training", self._clock()
