"""The training loop that every program shares: resume or init, step, log, checkpoint, stop.

A program is a pure step function ``step(state, batch) -> (state, metrics)``, an
iterator of sharded batches, and a way to put its state into a checkpoint tree;
``restore_or_init`` and ``run`` do the rest:
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
import orbax.checkpoint as ocp
from absl import logging

from mixsiam_jax import checkpoint
from mixsiam_jax.errors import UserError
from mixsiam_jax.stopping import Interrupted, StopRequest, Stopped

State = Any
Metrics = Dict[str, Any]
StepFn = Callable[[State, Any], Tuple[State, Metrics]]

# Metrics that must stay finite: these and every '*_loss' a program reports.
FINITE_METRICS = ("loss", "grad_norm", "param_norm")


class TrainingError(UserError):
  """Training cannot go on (e.g. a non-finite loss); the message says what to change."""
  exit_status = 3


def mean_metrics(history: Sequence[Metrics]) -> Dict[str, float]:
  """Averages a list of per-step metric dicts (device arrays or numbers) on the host."""
  host = jax.device_get(list(history))
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


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


class Progress:
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
      eta = (self._num_steps - step1) / out["steps_per_sec"]
      logging.info("step %d/%d: %.3g steps/s, ETA %s.", step1, self._num_steps,
                   out["steps_per_sec"], _format_seconds(eta))
    return out


def _format_seconds(seconds: float) -> str:
  minutes, _ = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  days, hours = divmod(hours, 24)
  return f"{days}d{hours:02d}h{minutes:02d}m" if days else f"{hours}h{minutes:02d}m"


def restore_or_init(manager: ocp.CheckpointManager, init: Callable[[], State],
                    to_tree: Callable[[State], Any], from_tree: Callable[[State, Any], State]
                    ) -> Tuple[State, int, Dict[str, Any]]:
  """The newest checkpoint of ``manager`` if there is one, else a new state.

  Args:
    manager: the run's checkpoint manager.
    init: builds the initial state (on the devices, with its shardings).
    to_tree: state -> checkpoint tree (the restore target: shapes and shardings).
    from_tree: (initial state, restored tree) -> the resumed state.

  Returns:
    (state, step it is at, the checkpoint's metadata or {}).
  """
  start_step = manager.latest_step() or 0
  state = init()
  if not start_step:
    return state, 0, {}
  tree, meta = checkpoint.restore(manager, start_step, to_tree(state))
  logging.info("Resumed from %s at step %d.", manager.directory, start_step)
  return from_tree(state, tree), start_step, meta


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """When the loop logs, evaluates and checkpoints.

  Attributes:
    num_steps: the last step of the run.
    log_every_steps: metrics are averaged and written every this many steps.
    checkpoint_every_steps: a checkpoint every this many steps (and at the end).
    eval_every_steps: the evaluator runs every this many steps (0: only at the end).
    steps_in_flight: steps dispatched ahead of the newest finished one; bounds
      the time from a stop request to the checkpoint.
  """
  num_steps: int
  log_every_steps: int
  checkpoint_every_steps: int
  eval_every_steps: int = 0
  steps_in_flight: int = 2

  def __post_init__(self):
    for name in ("log_every_steps", "checkpoint_every_steps", "steps_in_flight"):
      value = getattr(self, name)
      if isinstance(value, bool) or not (isinstance(value, int) and value > 0):
        raise UserError(f"{name}={value!r} must be a positive integer.")
    if not (isinstance(self.eval_every_steps, int) and self.eval_every_steps >= 0):
      raise UserError(f"eval_every_steps={self.eval_every_steps!r} must be >= 0 (0: only at "
                      "the end).")


def run(step_fn: StepFn, state: State, batches: Iterator[Any], *, start_step: int,
        options: LoopOptions, manager: ocp.CheckpointManager, to_tree: Callable[[State], Any],
        meta: Dict[str, Any], writer: Any, num_processes: int = 1,
        evaluate: Optional[Callable[[State], Dict[str, float]]] = None,
        hooks: Sequence[Callable[[int], None]] = ()) -> Dict[str, float]:
  """Runs steps start_step + 1 .. options.num_steps, then waits for the last checkpoint.

  A step's checkpoint is started before its evaluation, so an evaluation that
  fails or is interrupted costs no checkpoint. However the loop ends, it closes
  ``batches`` (if it has close()), waits for the pending save, and closes
  ``manager`` and ``writer``.

  Args:
    step_fn: the jitted step ``(state, batch) -> (state, metrics)``.
    state: the state at ``start_step``.
    batches: global batches, one per step, from step start_step + 1 on.
    start_step: the step ``state`` is at.
    options: when to log, evaluate, checkpoint, and how far to run ahead.
    manager: the checkpoint manager (closed on return).
    to_tree: state -> checkpoint tree.
    meta: JSON metadata saved with every checkpoint.
    writer: a clu MetricWriter (flushed and closed on return).
    num_processes: processes of the run (several stop at a step they agree on).
    evaluate: state -> metrics, at eval steps and at the last step.
    hooks: called with each dispatched step number (e.g. a profiler).

  Returns:
    The last logged metrics.

  Raises:
    TrainingError: a non-finite loss or norm (nothing non-finite is saved).
    Stopped: SIGTERM or SIGINT arrived; the checkpoint of the step named in it
      is complete.
    checkpoint.CheckpointSaveError: a checkpoint could not be written (one
      line: the directory, the OS error, the newest intact step).
  """
  history, last = [], {}
  in_flight = collections.deque()
  progress = Progress(options.num_steps)
  saved = start_step  # the newest step whose checkpoint exists or is being written

  def wait_for_oldest():
    jax.block_until_ready(in_flight.popleft()[1])

  def save(step, state):
    nonlocal saved
    # A run killed once this checkpoint exists resumes after it: its metrics
    # must be on disk first (the JSONL writer holds a step's row until the next
    # step arrives, to merge evaluations into it).
    writer.flush()
    checkpoint.save(manager, step, to_tree(state), meta)
    saved = step

  try:
    with StopRequest(num_processes) as stop:
      try:
        for step in range(start_step + 1, options.num_steps + 1):
          while len(in_flight) >= options.steps_in_flight:
            wait_for_oldest()
          try:
            with stop.waiting():  # a stalled source must not keep a signal waiting
              batch = next(batches)
          except Interrupted as e:
            # Nothing of this step ran: the state is the previous step's.
            if history:
              check_finite(mean_metrics(history), step - 1)
            if step - 1 > saved:
              save(step - 1, state)
            raise Stopped(step - 1, e.signum) from None
          state, metrics = step_fn(state, batch)
          in_flight.append((step, metrics))
          if step == start_step + 1:  # Start the clock once the compiled first step is done.
            jax.block_until_ready(metrics)
            progress.mark(step)
          history.append(metrics)
          for hook in hooks:
            hook(step)
          last_step = step == options.num_steps
          stop_now = stop.requested(step)
          save_now = stop_now or last_step or step % options.checkpoint_every_steps == 0
          if step % options.log_every_steps == 0 or last_step:
            last = mean_metrics(history)
            history = []
            check_finite(last, step)
            while in_flight:
              wait_for_oldest()
            progress.mark(step)
            writer.write_scalars(step, {**last, **progress.report()})
          elif save_now:
            check_finite(mean_metrics([metrics]), step)
          if save_now:
            save(step, state)
          eval_step = options.eval_every_steps and step % options.eval_every_steps == 0
          if evaluate is not None and (eval_step or last_step) and not stop_now:
            try:
              with stop.waiting():
                writer.write_scalars(step, evaluate(state))
            except Interrupted:
              logging.warning("The evaluation at step %d was interrupted; its checkpoint is "
                              "kept.", step)
              if step > saved:
                save(step, state)
              stop_now = True
          if stop_now:
            raise Stopped(step, stop.signum or signal.SIGTERM)  # None: another process's notice
      finally:
        _close(batches)
        try:
          checkpoint.wait_until_saved(manager, saved)
        finally:
          manager.close()
          writer.flush()
          writer.close()
  except Stopped as e:
    logging.warning("Stopped at step %d on request; rerun the same command to resume.", e.step)
    raise
  return last


def _close(batches: Any) -> None:
  """Closes an iterator of batches that can be closed (a generator, a data stream)."""
  close = getattr(batches, "close", None)
  if close is not None:
    close()
