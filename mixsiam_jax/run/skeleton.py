"""The skeleton of the training programs (pretraining, the linear probe): check, start, loop.

Both programs first check everything without writing (``open_workdir``: the workdir,
a resume's config, the step to start from; then their own data and model),
then ``train`` restores or initialises the state, records the run in the
workdir (config.json, metrics from the start step on), opens the metric writer
and runs the shared loop. A refused run leaves the workdir as it was.
"""
import contextlib
import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import jax

from mixsiam_jax.checkpoints import storage
from mixsiam_jax.checkpoints.run_checkpoints import Checkpoints
from mixsiam_jax.options.shared import Cadence
from mixsiam_jax.run import loop, metric_writer
from mixsiam_jax.workdir import run_files

State = Any


@dataclasses.dataclass(frozen=True)
class Workdir:
  """A workdir checked for a (re)start; nothing is written yet.

  Attributes:
    path: its absolute path.
    record: the resolved config, as config.json holds it.
    start_step: the newest checkpoint step (0 for a new run).
  """
  path: str
  record: Dict[str, Any]
  start_step: int

  @property
  def checkpoint_dir(self) -> str:
    """The directory of the run's checkpoints."""
    return storage.checkpoint_dir(self.path)

  def file(self, name: str) -> str:
    """The path of ``name`` inside the workdir."""
    return os.path.join(self.path, name)


def open_workdir(workdir: str, record: Dict[str, Any]) -> Workdir:
  """Checks ``workdir`` for a run of ``record`` without writing anything.

  Args:
    workdir: the run's directory (it need not exist yet).
    record: the resolved config of this run.

  Returns:
    The Workdir, with the step to resume from.

  Raises:
    WorkdirError: the workdir cannot be used, or holds a different experiment.
    CheckpointError: its newest checkpoint step cannot be read.
  """
  path = run_files.check_workdir(workdir)
  run_files.check_resume(path, record)
  return Workdir(path=path, record=record,
                 start_step=storage.latest_step(storage.checkpoint_dir(path)))


def train(workdir: Workdir, checkpoints: Checkpoints, *, init: Callable[[], State],
          step_fn: loop.StepFn, make_batches: Callable[[State, Any], Iterator[Any]],
          num_steps: int, cadence: Cadence,
          evaluate: Optional[Callable[[State], Dict[str, Any]]] = None,
          hooks: Sequence[Callable[[int], None]] = (),
          on_start: Optional[Callable[[Any], None]] = None,
          examples_per_step: Optional[int] = None) -> loop.LoopResult:
  """Restores or initialises the state, records the run, then runs the loop.

  Args:
    workdir: from open_workdir.
    checkpoints: the run's checkpoints (closed however this ends).
    init: builds the initial state.
    step_fn: ``(state, batch) -> (state, metrics)``.
    make_batches: ``(state, writer) -> batches`` from step workdir.start_step + 1 on;
      called once the run is recorded.
    num_steps: the run's last step.
    cadence: when to log, checkpoint and evaluate.
    evaluate: state -> metrics, at eval steps and at the last one; for a run
      that had already finished, called once on the restored state.
    hooks: called with each dispatched step (e.g. a profiler).
    on_start: called with the metric writer once the run is recorded (files
      of the program's own, hyper-parameters).
    examples_per_step: the global batch, for the images/s of the console lines.

  Returns:
    The loop's LoopResult (for a finished run: the restored state and the evaluation).
  """
  with contextlib.ExitStack() as on_error:
    on_error.callback(checkpoints.close)  # loop.train_loop closes them from there on.
    state, restored_step = checkpoints.restore_or_init(init)
    if restored_step != workdir.start_step:
      raise RuntimeError(f"restored step {restored_step}, expected {workdir.start_step}: the "
                         "checkpoints changed while the run started; this is a bug.")
    run_files.start_run(workdir.path, workdir.record, workdir.start_step)
    writer = metric_writer.create_writer(workdir.path, jax.process_index() == 0)
    on_error.callback(writer.close)
    if on_start is not None:
      on_start(writer)
    if workdir.start_step >= num_steps:
      return loop.LoopResult(state=state, step=workdir.start_step, metrics={},
                             evaluation=evaluate(state) if evaluate is not None else {})
    batches = make_batches(state, writer)
    on_error.pop_all()
  return loop.train_loop(step_fn, state, batches, start_step=workdir.start_step,
                         num_steps=num_steps, cadence=cadence, checkpoints=checkpoints,
                         writer=writer, num_processes=jax.process_count(), evaluate=evaluate,
                         hooks=hooks, examples_per_step=examples_per_step)
