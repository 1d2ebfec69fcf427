"""The training loop that every program shares: resume or init, step, log, checkpoint, stop.

A program is a pure step function ``step(state, batch) -> (state, metrics)``, an
iterator of sharded batches, and its checkpoints (run_checkpoints.Checkpoints, which
also resumes or initialises the state); ``train_loop`` does the rest:
- at most ``steps_in_flight`` steps are dispatched ahead of the newest finished
  one, so a stop request (SIGTERM) is acted on within that many steps plus one
  checkpoint write, and progress is timed on finished steps, not dispatches;
- the stop request is polled every step (the same step on every process);
- metrics are averaged on the host at log steps and checked for non-finite
  values before anything is checkpointed.
"""
import collections
import dataclasses
import math
import signal
import time
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from mixsiam_jax.checkpoints.run_checkpoints import Checkpoints
from mixsiam_jax.errors import UserError
from mixsiam_jax.options.checks import positive_int
from mixsiam_jax.options.shared import Cadence
from mixsiam_jax.run import stopping
from mixsiam_jax.run.progress import ConsoleProgress
from mixsiam_jax.run.stopping import Interrupted, StopRequest, Stopped

State = Any
Metrics = Dict[str, Any]
StepFn = Callable[[State, Any], Tuple[State, Metrics]]

# Metrics that must stay finite: these and every '*_loss' a program reports.
FINITE_METRICS = ("loss", "grad_norm", "param_norm")


class TrainingError(UserError):
  """Training cannot go on (e.g. a non-finite loss); the message says what to change."""
  exit_status = 3


# Metrics logged as their value at the logged step, not averaged over the logging window.
INSTANT_METRICS = ("lr",)


def mean_metrics(history: Sequence[Metrics]) -> Dict[str, float]:
  """Averages a list of per-step metric dicts (device arrays or numbers) on the host.

  Args:
    history: the metrics of consecutive steps, oldest first.

  Returns:
    The mean of each metric; INSTANT_METRICS (the learning rate) are the newest
    step's value.
  """
  host = jax.device_get(list(history))
  return {k: float(host[-1][k]) if k in INSTANT_METRICS else float(np.mean([h[k] for h in host]))
          for k in host[0]}


def _loss(metrics: Metrics) -> Optional[float]:
  """The step's main loss ('loss', else the first '*_loss'), fetched to the host; None if none."""
  names = ["loss"] if "loss" in metrics else sorted(k for k in metrics if k.endswith("_loss"))
  return float(jax.device_get(metrics[names[0]])) if names else None


def check_finite(metrics: Dict[str, float], step: int) -> None:
  """Raises TrainingError if a loss (any '*_loss') or norm in ``metrics`` is NaN or infinite."""
  watched = [k for k in metrics if k in FINITE_METRICS or k.endswith("_loss")]
  bad = [k for k in watched if not math.isfinite(metrics[k])]
  if bad:
    raise TrainingError(
        f"non-finite {', '.join(bad)} at step {step} ({', '.join(f'{k}={metrics[k]}' for k in bad)}); "
        "stopping before anything non-finite is checkpointed; the newest checkpoint is still "
        "good. Check the data, or start over in a new --workdir with a lower optim.base_lr "
        "(a resumed run must keep its optimiser settings).")


class StepTimer:
  """Steps per second and ETA between points where every dispatched step has finished.

  Dispatch can run ahead of (or, on small CPU programs, in step with) the devices,
  so the rate is only measured between marks taken after waiting for all steps:
  after the first step (which includes compilation, so it is excluded) and at
  each log step.
  """

  def __init__(self, num_steps: int):
    self._num_steps = num_steps
    self._start = time.monotonic()
    self._marks = []

  def mark(self, step: int) -> None:
    """Records that every step up to ``step`` has finished on the devices."""
    self._marks = (self._marks + [(step, time.monotonic())])[-2:]

  def report(self) -> Dict[str, float]:
    """{'uptime'} plus 'steps_per_sec' between the last two marks, when they differ."""
    out = {"uptime": time.monotonic() - self._start}
    if len(self._marks) == 2 and self._marks[1][0] > self._marks[0][0]:
      (step0, time0), (step1, time1) = self._marks
      out["steps_per_sec"] = (step1 - step0) / max(time1 - time0, 1e-9)
    return out


@dataclasses.dataclass(frozen=True)
class LoopResult:
  """How a finished loop left the run (a loop stopped early raises stopping.Stopped instead).

  Attributes:
    state: the state after the last step.
    step: the last step (num_steps).
    metrics: the last logged metrics ({} if no step ran).
    evaluation: what the evaluator returned at the last step ({} without one).
  """
  state: State
  step: int
  metrics: Dict[str, float]
  evaluation: Dict[str, Any]


class _LoopState:
  """The state of one call of ``train_loop``: what is in flight, what is saved, what was logged."""

  def __init__(self, checkpoints: Checkpoints, writer: Any, num_steps: int, start_step: int,
               console: ConsoleProgress):
    self.checkpoints, self.writer, self.console = checkpoints, writer, console
    self.in_flight = collections.deque()
    self.history, self.last, self.evaluation = [], {}, {}
    self.timer = StepTimer(num_steps)
    self.saved = start_step  # the newest step whose checkpoint exists or is being written
    self.start_step = start_step

  def wait_for_steps(self, keep_running: int) -> None:
    """Waits for the oldest dispatched steps until at most ``keep_running`` are unfinished."""
    while len(self.in_flight) > keep_running:
      step, metrics = self.in_flight.popleft()
      jax.block_until_ready(metrics)
      # Only the first step's loss is fetched here (its line says it); later lines show the
      # logged mean, so no step pays for a transfer it does not need.
      first = step == self.start_step + 1 and self.console.enabled
      self.console.finished(step, _loss(metrics) if first else None)

  def dispatch(self, step: int, step_fn: StepFn, state: State, batch: Any
               ) -> Tuple[State, Metrics]:
    """Dispatches ``step``; the first one is shown as the compile and waited for."""
    first = step == self.start_step + 1
    if first:
      # jit traces and compiles before it dispatches: the call's time is the compile's.
      with self.console.compiling():
        state, metrics = step_fn(state, batch)
      self.console.training()
    else:
      state, metrics = step_fn(state, batch)
    self.in_flight.append((step, metrics))
    if first:  # Start the clock once the compiled first step is done.
      self.wait_for_steps(0)
      self.timer.mark(step)
      stopping.first_step_finished()  # From here on a signal saves, then stops.
    self.history.append(metrics)
    return state, metrics

  def save(self, step: int, state: State) -> None:
    # A run killed once this checkpoint exists resumes after it: its metrics
    # must be on disk first (the JSONL writer holds a step's row until the next
    # step arrives, to merge evaluations into it).
    self.writer.flush()
    with self.console.phase(f"saving the checkpoint of step {step}"):
      self.checkpoints.save(step, state)
    self.saved = step

  def stop_before(self, step: int, state: State, signum: int) -> Stopped:
    """A signal arrived while waiting for ``step``'s batch: saves step - 1 if needed."""
    # Nothing of this step ran: the state is the previous step's.
    if self.history:
      check_finite(mean_metrics(self.history), step - 1)
    if step - 1 > self.saved:
      self.save(step - 1, state)
    return Stopped(step - 1, signum)

  def log(self, step: int) -> None:
    """Averages the metrics since the last log, checks them and writes them."""
    self.last = mean_metrics(self.history)
    self.history = []
    check_finite(self.last, step)
    self.wait_for_steps(0)
    self.timer.mark(step)
    self.writer.write_scalars(step, {**self.last, **self.timer.report()})
    self.console.log_step(step, _loss(self.last))

  def evaluate(self, step: int, state: State, evaluate: Callable[[State], Dict[str, Any]],
               stop: StopRequest) -> bool:
    """Runs the evaluator and writes its metrics; True if a signal interrupted it."""
    try:
      with stop.waiting(), self.console.phase(f"evaluating at step {step}"):
        self.evaluation = evaluate(state)
      self.writer.write_scalars(step, self.evaluation)
      return False
    except Interrupted:
      logging.warning("The evaluation at step %d was interrupted; its checkpoint is kept.", step)
      if step > self.saved:
        if self.history:  # not a log step: its metrics are unchecked
          check_finite(mean_metrics(self.history), step)
        self.save(step, state)
      return True

  def close(self, batches: Any) -> None:
    """Closes the batches, waits for the pending save, closes the manager and the writer."""
    try:
      _close(batches)
    finally:
      try:
        self.checkpoints.wait_until_saved(self.saved)
      finally:
        try:
          self.checkpoints.close()
        finally:
          self.writer.flush()
          self.writer.close()


def train_loop(step_fn: StepFn, state: State, batches: Iterator[Any], *, start_step: int,
               num_steps: int, cadence: Cadence, checkpoints: Checkpoints, writer: Any,
               num_processes: int = 1,
               evaluate: Optional[Callable[[State], Dict[str, Any]]] = None,
               hooks: Sequence[Callable[[int], None]] = (), steps_in_flight: int = 2,
               examples_per_step: Optional[int] = None) -> LoopResult:
  """Runs steps start_step + 1 .. num_steps, then waits for the last checkpoint.

  At most ``steps_in_flight`` steps are dispatched ahead of the newest finished
  one, which bounds the time from a stop request to the checkpoint. A step's
  checkpoint is started before its evaluation, so an evaluation that fails or is
  interrupted costs no checkpoint. However the loop ends, it closes ``batches``
  (if it has close()), waits for the pending save, and closes ``checkpoints``
  and ``writer``.

  Args:
    step_fn: the jitted step ``(state, batch) -> (state, metrics)``.
    state: the state at ``start_step``.
    batches: global batches, one per step, from step start_step + 1 on.
    start_step: the step ``state`` is at.
    num_steps: the last step of the run.
    cadence: when to log, checkpoint and evaluate.
    checkpoints: the run's checkpoints (closed on return).
    writer: a clu MetricWriter (flushed and closed on return).
    num_processes: processes of the run (several stop at a step they agree on).
    evaluate: state -> metrics, at eval steps and at the last step.
    hooks: called with each dispatched step number (e.g. a profiler).
    steps_in_flight: steps dispatched ahead of the newest finished one.
    examples_per_step: the global batch, for the images/s of the console lines.

  Returns:
    The LoopResult: final state, last logged metrics, last evaluation.

  Raises:
    TrainingError: a non-finite loss or norm (nothing non-finite is saved).
    Stopped: SIGTERM or SIGINT arrived; the checkpoint of the step named in it
      is complete.
    storage.CheckpointSaveError: a checkpoint could not be written (one
      line: the directory, the OS error, the newest intact step).
  """
  positive_int("steps_in_flight", steps_in_flight)
  console = ConsoleProgress(start_step=start_step, num_steps=num_steps,
                            examples_per_step=examples_per_step,
                            enabled=jax.process_index() == 0)
  loop = _LoopState(checkpoints, writer, num_steps, start_step, console)
  try:
    with StopRequest(num_processes) as stop, console:
      try:
        for step in range(start_step + 1, num_steps + 1):
          loop.wait_for_steps(steps_in_flight - 1)
          try:
            # A stalled source must not keep a signal waiting.
            with stop.waiting(), console.phase("waiting for the input pipeline"):
              batch = next(batches)
          except Interrupted as e:
            raise loop.stop_before(step, state, e.signum) from None
          state, metrics = loop.dispatch(step, step_fn, state, batch)
          for hook in hooks:
            hook(step)
          last_step = step == num_steps
          stop_now = stop.requested(step)
          save_now = stop_now or last_step or step % cadence.checkpoint_every_steps == 0
          if step % cadence.log_every_steps == 0 or last_step:
            loop.log(step)
          elif save_now:
            check_finite(mean_metrics([metrics]), step)
          if save_now:
            loop.save(step, state)
          eval_step = cadence.eval_every_steps and step % cadence.eval_every_steps == 0
          if evaluate is not None and (eval_step or last_step) and not stop_now:
            stop_now = loop.evaluate(step, state, evaluate, stop)
          if stop_now:
            raise Stopped(step, stop.signum or signal.SIGTERM)  # None: another process's notice
      finally:
        loop.close(batches)
  except Stopped as e:
    logging.warning("Stopped at step %d on request; rerun the same command to resume.", e.step)
    raise
  return LoopResult(state=state, step=num_steps, metrics=loop.last, evaluation=loop.evaluation)


def _close(batches: Any) -> None:
  """Closes an iterator of batches that can be closed (a generator, a data stream)."""
  close = getattr(batches, "close", None)
  if close is not None:
    close()
