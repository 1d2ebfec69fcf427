"""A training run's checkpoints as one object: the manager, the state <-> tree maps, the metadata.

Pretraining and the linear probe each describe how their state goes into a
checkpoint tree and back (``to_tree`` / ``from_tree``) and what metadata every
step carries; ``Checkpoints`` does the rest: resume or init, save, wait for the
pending save, close. loop.train_loop takes it.
"""
from typing import Any, Callable, Dict, Tuple

import orbax.checkpoint as ocp
from absl import logging

from mixsiam_jax.checkpoints import storage
from mixsiam_jax.options.shared import CheckpointOptions

State = Any


class Checkpoints:
  """The checkpoints of one run in ``directory``.

  Attributes:
    manager: the Orbax CheckpointManager (closed by close()).
    meta: JSON metadata saved with every step.
  """

  def __init__(self, directory: str, options: CheckpointOptions,
               to_tree: Callable[[State], Dict[str, Any]],
               from_tree: Callable[[State, Dict[str, Any]], State], meta: Dict[str, Any]):
    """Opens (or creates) the manager.

    Args:
      directory: the run's checkpoint directory (storage.checkpoint_dir(workdir)).
      options: which steps to keep, and whether saves run in the background.
      to_tree: state -> checkpoint tree (also the restore target: shapes and shardings).
      from_tree: (initial state, restored tree) -> the resumed state.
      meta: JSON metadata saved with every step.
    """
    self.manager: ocp.CheckpointManager = storage.create_manager(
        directory, keep=options.keep, keep_every_steps=options.keep_every_steps,
        async_save=options.async_save)
    self.meta = meta
    self._to_tree, self._from_tree = to_tree, from_tree

  def restore_or_init(self, init: Callable[[], State]) -> Tuple[State, int]:
    """The newest checkpoint if there is one, else ``init()``.

    Args:
      init: builds the initial state (on the devices, with its shardings).

    Returns:
      (state, the step it is at).
    """
    start_step = self.manager.latest_step() or 0
    state = init()
    if not start_step:
      return state, 0
    tree, _ = storage.restore(self.manager, start_step, self._to_tree(state))
    logging.info("Resumed from %s at step %d.", self.manager.directory, start_step)
    return self._from_tree(state, tree), start_step

  def save(self, step: int, state: State) -> None:
    """Starts writing ``state`` as ``step`` (in the background when async)."""
    storage.save(self.manager, step, self._to_tree(state), self.meta)

  def wait_until_saved(self, step: int) -> None:
    """Waits for the pending save; a failed one raises storage.CheckpointSaveError."""
    storage.wait_until_saved(self.manager, step)

  def close(self) -> None:
    """Closes the manager (after wait_until_saved)."""
    self.manager.close()
