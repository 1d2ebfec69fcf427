"""Orbax checkpoints: save, resume, and restore onto the state's device layout.

A checkpoint step holds two items:
  * 'state': {'step', 'params', 'batch_stats', 'opt_state', 'rng'} where rng is
    raw uint32 key data (typed PRNG keys are not serialisable on every Orbax
    version);
  * 'meta': JSON with the model options (so evaluation programs can rebuild
    the network without the config) and the data-pipeline position, plus the
    checksum of every array of 'state' (checksums.py), which every
    restore verifies: a step whose arrays differ is refused like an unreadable
    one. Callers never see the checksums in the metadata they get back.
Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-save leaves the previous step as the newest one.
"""
import os
from typing import Any, Callable, Dict, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from mixsiam_jax.checkpoints import checksums, faults, type_handlers
from mixsiam_jax.errors import UserError
from mixsiam_jax.workdir.run_files import CHECKPOINT_DIR

STATE, META = "state", "meta"


class CheckpointError(UserError):
  """A checkpoint that cannot be found, read or used."""


def checkpoint_dir(workdir: str) -> str:
  """The checkpoints/ directory of a workdir."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def create_manager(directory: str, *, keep: int = 3, keep_every_steps: int = 0,
                   async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager keeping the newest ``keep`` steps plus every ``keep_every_steps``.

  Args:
    directory: where the step directories live.
    keep: number of newest checkpoints kept.
    keep_every_steps: also keep steps that are multiples of this (0: none).
    async_save: write in a background thread while training goes on.
    read_only: never write or delete (evaluation programs).

  Returns:
    The manager; saves are explicit (see save).
  """
  if keep < 1:
    raise CheckpointError(f"keep_checkpoints={keep} must be >= 1.")
  _check_not_a_file(directory)
  policies = [checkpoint_managers.LatestN(n=keep)]
  if keep_every_steps:
    policies.append(checkpoint_managers.EveryNSteps(interval_steps=keep_every_steps))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
      save_interval_steps=0 if read_only else 1)
  state_handler = ocp.PyTreeCheckpointHandler(
      type_handler_registry=type_handlers.handlers_without_slicing())
  with type_handlers.without_read_only_notice():
    return ocp.CheckpointManager(
        directory, options=options,
        item_handlers={STATE: state_handler, META: ocp.JsonCheckpointHandler()})


def _check_not_a_file(directory: str) -> None:
  """Refuses a file (or a link to nothing) where the checkpoints/ directory must be."""
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise CheckpointError(f"{directory} is a file, not a checkpoint directory: no checkpoint "
                          "could be written there. Move it away and rerun, or use a new "
                          "--workdir.")


def latest_step(directory: str) -> int:
  """The newest step in ``directory``, read and checked; 0 if none (or no directory).

  For the checks before a run starts (create_manager makes the directory); writes
  nothing. The newest step directory is read, not judged by its name: its
  metadata and the step number saved in its state must be there, and that
  number must be the directory's name.

  Args:
    directory: a checkpoints/ directory.

  Returns:
    The newest step.

  Raises:
    CheckpointError: one line naming the newest step directory when it is empty,
      incomplete or holds another step, with an intact older step and the
      command that makes the next run use it (as restore does).
  """
  if not os.path.isdir(directory):
    _check_not_a_file(directory)
    return 0
  manager = create_manager(directory, read_only=True, async_save=False)
  try:
    step = manager.latest_step()
    if not step:
      return 0
    try:
      read_step(manager, step)
    except Exception as e:  # Orbax raises several types for missing or unreadable files.
      raise broken_step_error(manager, step, e, lambda s: read_step(manager, s)) from e
    return step
  finally:
    manager.close()


def read_step(manager: ocp.CheckpointManager, step: int) -> Dict[str, Any]:
  """Reads what a step saved besides its arrays and checks that it is that step.

  Reads the state's structure, the 'meta' JSON and the saved step number (a
  scalar), not the arrays: cheap enough for every start.

  Args:
    manager: the manager holding ``step``.
    step: the step directory's number.

  Returns:
    The step's metadata dict.

  Raises:
    Exception: Orbax's own errors for a missing or unreadable item, or a
      ValueError for a saved step number other than ``step`` (callers turn
      either into a CheckpointError, see broken_step_error).
  """
  if not os.listdir(faults.step_path(str(manager.directory), step)):
    raise ValueError("the directory is empty")
  try:
    saved = manager.item_metadata(step)[STATE]
  except KeyError:
    saved = None
  if saved is None:
    raise ValueError(f"it has no '{STATE}' item")
  meta, _ = checksums.split(manager.restore(
      step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])
  if "step" in saved:
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
        {"step": 0}, restore_args={"step": ocp.RestoreArgs(restore_type=np.ndarray)},
        partial_restore=True)}))
    number = int(np.asarray(restored[STATE]["step"]))
    if number != step:
      raise ValueError(f"it holds the state of step {number}: a renamed or copied step "
                       "directory")
  return meta


def state_tree(state: Any, rng: jax.Array) -> Dict[str, Any]:
  """The pytree saved for a TrainState and the run's base PRNG key."""
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "rng": jax.random.key_data(rng)}


def save(manager: ocp.CheckpointManager, step: int, tree: Dict[str, Any],
         meta: Dict[str, Any]) -> None:
  """Starts saving ``tree`` and ``meta`` as ``step`` (asynchronously if so configured).

  The checksums of ``tree``'s arrays are computed first, on the host, and saved
  in the 'meta' item (about 0.1 s for the 0.3 GiB ResNet-50 state on a 2-core
  CPU; docs/operations.md, "What the checksums cost").

  Raises:
    CheckpointSaveError: this save, or a pending asynchronous one, failed to
      write (see save_failure).
  """
  meta = {**meta, checksums.KEY: checksums.record(tree)}
  try:
    manager.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.PyTreeSave(tree), META: ocp.args.JsonSave(meta)}), force=True)
  except Exception as e:  # pylint: disable=broad-except  (storage faults come in many types)
    _raise_save_failure(manager, step, e)


def wait_until_saved(manager: ocp.CheckpointManager, step: int) -> None:
  """Waits for the pending asynchronous save (of ``step``) to be complete on disk.

  Raises:
    CheckpointSaveError: the save failed to write (see save_failure).
  """
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    _raise_save_failure(manager, step, e)


def _raise_save_failure(manager: ocp.CheckpointManager, step: int, error: Exception) -> None:
  """Raises save_failure's one-line error from ``error``, or ``error`` itself (a bug)."""
  failure = save_failure(manager, step, error)
  if failure is error:
    raise error
  raise failure from error


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written (disk full, permission, I/O error); training stopped."""
  exit_status = 4


def save_failure(manager: ocp.CheckpointManager, step: int, error: BaseException
                 ) -> BaseException:
  """The one-line error of a failed save; the half-written step directory is removed.

  Args:
    manager: the run's manager.
    step: the step being saved (or the newest pending one).
    error: what Orbax raised.

  Returns:
    A CheckpointSaveError naming the directory, the OS error (with the free
    space when the disk is full) and the newest intact step to resume from;
    ``error`` itself if it is not a storage fault (a bug keeps its traceback).
  """
  message = faults.save_failure_message(str(manager.directory), step, error)
  return error if message is None else CheckpointSaveError(message)


def broken_step_error(manager: ocp.CheckpointManager, step: int, error: BaseException,
                      read: Callable[[int], Any]) -> CheckpointError:
  """The CheckpointError of an unreadable ``step`` (see faults.broken_message).

  Args:
    manager: the checkpoints' manager.
    step: the step that could not be read.
    error: what reading it raised.
    read: reads a step (to find the newest older step that restores intact).

  Returns:
    The error to raise.
  """
  return CheckpointError(faults.broken_message(
      str(manager.directory), manager.all_steps(), step, error, read))


def restore(manager: ocp.CheckpointManager, step: int, target: Dict[str, Any]
            ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Restores ``step`` into the structure, shapes and shardings of ``target``.

  Args:
    manager: the checkpoint manager.
    step: the step to restore.
    target: a tree like state_tree(...) of arrays or jax.ShapeDtypeStructs with
      shardings; restored arrays get these shardings, so a checkpoint written
      on N devices restores on M.

  Returns:
    (restored tree, meta dict).

  Raises:
    CheckpointError: one line naming the checkpoint and what did not match; if
      the newest step is unreadable or its arrays differ from their recorded
      checksums, also the newest older step that restores intact and the
      command that makes the next run use it. The caller closes the manager
      before the error ends the program.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

  def read(s):
    restored = manager.restore(s, args=ocp.args.Composite(
        **{STATE: ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
           META: ocp.args.JsonRestore()}))
    return checksums.verify_restored(restored[STATE], restored[META])

  try:
    saved = manager.item_metadata(step)[STATE]
  except Exception as e:  # Orbax raises several types for unreadable metadata.
    raise broken_step_error(manager, step, e, read) from e
  mismatch = faults.incompatibility(
      saved, abstract, faults.step_path(str(manager.directory), step))
  if mismatch:
    raise CheckpointError(mismatch)
  try:
    tree, meta, verified = read(step)
  except Exception as e:  # Truncated files surface as many different errors.
    raise broken_step_error(manager, step, e, read) from e
  if not verified:
    warn_unverified(manager, step)
  return tree, meta


def warn_unverified(manager: ocp.CheckpointManager, step: int) -> None:
  """Logs one line saying that ``step`` records no checksums, so it was restored unverified."""
  logging.warning("Checkpoint %s records no checksums of its arrays (written by an earlier "
                  "version): restored without verifying them.",
                  faults.step_path(str(manager.directory), step))


def read_meta(manager: ocp.CheckpointManager, step: int) -> Dict[str, Any]:
  """The JSON metadata saved with ``step``, without reading its arrays.

  Raises:
    CheckpointError: naming the checkpoint if its metadata cannot be read.
  """
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
  except Exception as e:  # Orbax raises several types for unreadable files.
    where = faults.step_path(str(manager.directory), step)
    raise CheckpointError(f"checkpoint {where} is unreadable or incomplete "
                          f"({faults.reason(e)}).") from e
  return checksums.split(restored[META])[0]
