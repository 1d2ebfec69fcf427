"""Orbax checkpoints: save, resume, and restore onto any device layout.

A checkpoint step holds two items:
  * 'state': {'step', 'params', 'batch_stats', 'opt_state', 'rng'} where rng is
    raw uint32 key data (typed PRNG keys are not serialisable on every Orbax
    version);
  * 'meta': JSON with the model options (so evaluation programs can rebuild
    the network without the config) and the data-pipeline position.
Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-save leaves the previous step as the newest one.
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers

from mixsiam_jax import sharding

STATE, META = "state", "meta"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
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
  policies = [checkpoint_managers.LatestN(n=keep)]
  if keep_every_steps:
    policies.append(checkpoint_managers.EveryNSteps(interval_steps=keep_every_steps))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers={STATE: ocp.PyTreeCheckpointHandler(), META: ocp.JsonCheckpointHandler()})


def state_tree(state: Any, rng: jax.Array) -> Dict[str, Any]:
  """The pytree saved for a TrainState and the run's base PRNG key."""
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "rng": jax.random.key_data(rng)}


def save(manager: ocp.CheckpointManager, step: int, tree: Dict[str, Any],
         meta: Dict[str, Any]) -> None:
  """Starts saving ``tree`` and ``meta`` as ``step`` (asynchronously if so configured)."""
  manager.save(step, args=ocp.args.Composite(
      **{STATE: ocp.args.PyTreeSave(tree), META: ocp.args.JsonSave(meta)}), force=True)


def _describe(directory: str, step: int) -> str:
  return os.path.join(directory, str(step))


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
    CheckpointError: naming the checkpoint and what did not match.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  where = _describe(str(manager.directory), step)
  try:
    saved = manager.item_metadata(step)[STATE]
  except Exception as e:  # Orbax raises several types for unreadable metadata.
    raise CheckpointError(f"checkpoint {where} is unreadable or incomplete: {e}") from e
  _check_compatible(saved, abstract, where)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
           META: ocp.args.JsonRestore()}))
  except Exception as e:  # Truncated files surface as many different errors.
    raise CheckpointError(f"checkpoint {where} could not be restored: {e}") from e
  return restored[STATE], dict(restored[META] or {})


def _check_compatible(saved: Any, abstract: Any, where: str) -> None:
  """Raises CheckpointError if the saved model's keys or shapes differ from ``abstract``.

  Only 'params' and 'batch_stats' are compared: they are plain nested dicts in
  both trees, while Orbax's metadata spells optimiser-state containers differently.
  """
  def flat(tree):
    return {jax.tree_util.keystr(k): v for name in ("params", "batch_stats") if name in tree
            for k, v in jax.tree_util.tree_flatten_with_path({name: tree[name]})[0]}
  saved_flat, want_flat = flat(saved), flat(abstract)
  missing = sorted(set(want_flat) - set(saved_flat))
  unexpected = sorted(set(saved_flat) - set(want_flat))
  if missing or unexpected:
    raise CheckpointError(
        f"checkpoint {where} was written by a different model or optimiser: "
        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
        f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
        "Use the config it was trained with (its workdir's config.json) or a fresh --workdir.")
  for key, want in want_flat.items():
    have = getattr(saved_flat[key], "shape", None)
    if have is not None and tuple(have) != tuple(want.shape):
      raise CheckpointError(
          f"checkpoint {where}: {key} has shape {tuple(have)}, the model expects "
          f"{tuple(want.shape)} (different depth or width?). Use the config it was trained with "
          "or a fresh --workdir.")


def restore_replicated(workdir: str, mesh: Mesh, step: Optional[int] = None,
                       items: Tuple[str, ...] = ("params", "batch_stats")
                       ) -> Tuple[Dict[str, Any], Dict[str, Any], int]:
  """Restores parts of a pretraining run's checkpoint, replicated on ``mesh``.

  Works whatever device layout wrote the checkpoint; nothing in ``workdir`` is
  modified.

  Args:
    workdir: a pretraining workdir (holding checkpoints/).
    mesh: where the restored arrays are placed (replicated).
    step: the step to restore (default: the newest).
    items: top-level entries of the state tree to return.

  Returns:
    (dict of the requested entries, meta dict, step).

  Raises:
    CheckpointError: naming the path when there is nothing usable to restore.
  """
  if not workdir:
    raise CheckpointError("--config.pretrained is empty: set it to a pretraining workdir.")
  if not os.path.isdir(workdir):
    raise CheckpointError(f"pretrained={workdir} does not exist or is not a directory.")
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"pretrained={workdir} holds no checkpoints/ directory; "
                          "point it at the --workdir of a pretraining run.")
  manager = create_manager(directory, read_only=True, async_save=False)
  try:
    steps = manager.all_steps()
    if not steps:
      raise CheckpointError(f"pretrained={workdir}: {directory} holds no complete checkpoint.")
    step = max(steps) if step is None else step
    if step not in steps:
      raise CheckpointError(f"pretrained={workdir} has no checkpoint at step {step}; "
                            f"available: {sorted(steps)}.")
    where = _describe(directory, step)
    try:
      saved = manager.item_metadata(step)[STATE]
      meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    except Exception as e:
      raise CheckpointError(f"checkpoint {where} is unreadable or incomplete: {e}") from e
    rep = sharding.replicated(mesh)
    abstract = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rep),
                                saved[k]) for k in items if k in saved}
    missing = [k for k in items if k not in abstract]
    if missing:
      raise CheckpointError(f"checkpoint {where} has no {missing}; was it written by mixsiam_jax?")
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.PyTreeRestore(abstract, restore_args=jax.tree.map(
              lambda a: ocp.ArrayRestoreArgs(sharding=rep, global_shape=a.shape, dtype=a.dtype),
              abstract), partial_restore=True)}))
    except Exception as e:
      raise CheckpointError(f"checkpoint {where} could not be restored: {e}") from e
    return dict(restored[STATE]), dict(meta or {}), step
  finally:
    manager.close()
