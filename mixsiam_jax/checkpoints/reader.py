"""A pretraining run's checkpoint read for evaluation: its arrays replicated on any mesh.

The kNN program, the linear probe and the weight export read a pretraining
workdir this way: the requested entries of its state (default: params and
batch_stats) and its metadata, verified against the recorded checksums, on
whatever device layout the reader has; nothing in the workdir is written.
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from mixsiam_jax import sharding
from mixsiam_jax.checkpoints import checksums, faults, storage
from mixsiam_jax.checkpoints.storage import CheckpointError


def restore_replicated(workdir: str, mesh: Mesh, step: Optional[int] = None,
                       items: Tuple[str, ...] = ("params", "batch_stats"),
                       field: str = "pretrained") -> Tuple[Dict[str, Any], Dict[str, Any], int]:
  """Restores parts of a pretraining run's checkpoint, replicated on ``mesh``.

  Works whatever device layout wrote the checkpoint; nothing in ``workdir`` is
  modified.

  Args:
    workdir: a pretraining workdir (holding checkpoints/).
    mesh: where the restored arrays are placed (replicated).
    step: the step to restore (default: the newest).
    items: top-level entries of the state tree to return.
    field: the option that named ``workdir``, in messages ("pretrained" for
      --config.pretrained, "--workdir" for a tool's flag).

  Returns:
    (dict of the requested entries, meta dict, step).

  Raises:
    CheckpointError: one line naming the path when there is nothing usable to
      restore (for an unreadable newest step, or one whose restored entries
      differ from their recorded checksums, as restore does).
  """
  if not workdir:
    raise CheckpointError("--config.pretrained is empty: set it to a pretraining workdir.")
  if not os.path.isdir(workdir):
    raise CheckpointError(f"{field}={workdir} does not exist or is not a directory.")
  directory = storage.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"{field}={workdir} holds no checkpoints/ directory; "
                          "point it at the --workdir of a pretraining run.")
  manager = storage.create_manager(directory, read_only=True, async_save=False)
  try:
    steps = manager.all_steps()
    if not steps:
      raise CheckpointError(f"{field}={workdir}: {directory} holds no complete checkpoint.")
    step = max(steps) if step is None else step
    if step not in steps:
      raise CheckpointError(f"{field}={workdir} has no checkpoint at step {step}; "
                            f"available: {sorted(steps)}.")
    read = lambda s: _read_replicated(manager, s, sharding.replicated(mesh), items)
    try:
      tree, meta, verified = read(step)
    except CheckpointError:
      raise
    except Exception as e:  # Unreadable or truncated files, or arrays that differ from the saved.
      raise storage.broken_step_error(manager, step, e, read) from e
    if not verified:
      storage.warn_unverified(manager, step)
    return tree, meta, step
  finally:
    manager.close()


def _read_replicated(manager: ocp.CheckpointManager, step: int, rep: Any, items: Tuple[str, ...]
                     ) -> Tuple[Dict[str, Any], Dict[str, Any], bool]:
  """(requested entries of the state, meta, whether verified) of ``step`` with sharding ``rep``.

  Orbax's errors and checksums.ChecksumMismatch pass to the caller.
  """
  saved = manager.item_metadata(step)[storage.STATE]
  meta = manager.restore(
      step, args=ocp.args.Composite(**{storage.META: ocp.args.JsonRestore()}))[storage.META]
  abstract = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rep),
                              saved[k]) for k in items if k in saved}
  missing = [k for k in items if k not in abstract]
  if missing:
    where = faults.step_path(str(manager.directory), step)
    raise CheckpointError(f"checkpoint {where} has no {missing}; was it written by "
                          "mixsiam_jax?")
  restored = manager.restore(step, args=ocp.args.Composite(**{
      storage.STATE: ocp.args.PyTreeRestore(abstract, restore_args=jax.tree.map(
          lambda a: ocp.ArrayRestoreArgs(sharding=rep, global_shape=a.shape, dtype=a.dtype),
          abstract), partial_restore=True)}))
  return checksums.verify_restored(dict(restored[storage.STATE]), meta)
