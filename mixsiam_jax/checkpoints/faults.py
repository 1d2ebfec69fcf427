"""Why a checkpoint step cannot be written, read or used: the one-line diagnoses of storage.py.

Each function returns the message (storage.py raises it as its own error
types), names the step directory, and says what to do: the newest intact step
to resume from, or the command that moves a broken step out of the way.
"""
import errno
import os
import re
import shutil
from typing import Any, Callable, List, Optional, Sequence

import jax
import orbax.checkpoint as ocp

from mixsiam_jax.checkpoints.checksums import ChecksumMismatch
from mixsiam_jax.workdir import paths

# TensorStore's status codes and OS error numbers mark a failure of the storage, not of the program.
_STORAGE_FAULT = re.compile(r"os_error_code|^(RESOURCE_EXHAUSTED|PERMISSION_DENIED|NOT_FOUND|"
                            r"FAILED_PRECONDITION|UNAVAILABLE|DATA_LOSS|ABORTED|UNKNOWN|"
                            r"INTERNAL|ALREADY_EXISTS):")


def step_path(directory: str, step: int) -> str:
  """The directory of ``step`` in the checkpoints/ ``directory``."""
  return os.path.join(directory, str(step))


def reason(error: BaseException) -> str:
  """The first line of a library error (TensorStore appends a multi-line spec to its own)."""
  lines = str(error).strip().splitlines()
  text = lines[0].split(" See full TensorStore details")[0] if lines else type(error).__name__
  return text if len(text) <= 300 else text[:300] + "..."


def save_failure_message(directory: str, step: int, error: BaseException) -> Optional[str]:
  """The one-line message of a failed save; half-written step directories are removed.

  Args:
    directory: the checkpoints/ directory being written.
    step: the step being saved (or the newest pending one).
    error: what Orbax raised.

  Returns:
    The message naming the directory, the OS error (with the free space when
    the disk is full) and the newest intact step to resume from; None if
    ``error`` is not a storage fault (a bug, which keeps its traceback).
  """
  text = str(error)
  if not (isinstance(error, OSError) or _STORAGE_FAULT.search(text.strip())):
    return None
  newest_complete = max(_complete_steps(directory), default=0)
  failed = []
  for name in (os.listdir(directory) if os.path.isdir(directory) else []):
    prefix, tmp, _ = name.partition(ocp.path.step.TMP_DIR_SUFFIX)
    if tmp and prefix.isdigit():
      # Never resumed from (Orbax renames only complete steps), but it holds disk space. No
      # save is in flight now: an asynchronous one that failed surfaces only here.
      if int(prefix) > newest_complete:  # older ones: left by an earlier crash
        failed.append(int(prefix))
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  step = min(failed, default=step)
  code = re.search(r"os_error_code='?(\d+)", text)
  errno_value = int(code.group(1)) if code else getattr(error, "errno", None)
  why = os.strerror(errno_value).lower() if errno_value else reason(error)
  if errno_value == errno.ENOSPC:
    why += f", {paths.free_space(directory)} free"
  intact = [s for s in _complete_steps(directory) if s < step]
  resume = (f"the newest intact checkpoint is step {max(intact)}" if intact
            else "no earlier checkpoint exists")
  return (f"cannot save checkpoint {step} in {directory}: {why}; {resume}. Fix the storage "
          "(free space, permissions) and rerun the same command to resume.")


def _complete_steps(directory: str) -> List[int]:
  """Step directories Orbax has committed (renamed from their temporary names)."""
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []


def _readable(read: Callable[[int], Any], step: int) -> bool:
  try:
    read(step)
  except Exception:  # pylint: disable=broad-except  # any failure: not intact
    return False
  return True


def broken_message(directory: str, steps: Sequence[int], step: int, error: BaseException,
                   read: Callable[[int], Any]) -> str:
  """The one-line message for an unreadable ``step``; for the newest, an intact older step to use.

  A step whose arrays do not match their recorded checksums is named corrupt;
  the advice is the same.

  Args:
    directory: the checkpoints/ directory.
    steps: the steps it holds (the manager's all_steps()).
    step: the step that failed.
    error: what failed (a ChecksumMismatch for a corrupt array).
    read: step -> anything, raising if that step cannot be restored or does not
      match its checksums (tried on older steps, newest first, until one works).

  Returns:
    The message of the error to raise.
  """
  where = step_path(directory, step)
  # A checksum that differs: the files read, but an array is not what was saved.
  state = "corrupt" if isinstance(error, ChecksumMismatch) else "unreadable or incomplete"
  message = f"checkpoint {where} is {state} ({reason(error)})"
  steps = sorted(steps, reverse=True)
  if not steps or step != steps[0]:
    return message + "."
  older = steps[1:]
  intact = next((s for s in older if _readable(read, s)), None)
  parked = os.path.join(os.path.dirname(directory), f"broken_checkpoint_{step}")
  if intact is not None:
    fix = (f"step {intact} is intact: move the broken step away (mv {where} {parked}) and rerun "
           f"the same command to use step {intact}.")
  elif older:
    fix = f"no older step is intact either ({older}): start over in a new --workdir."
  else:
    fix = (f"it is the only checkpoint: move it away (mv {where} {parked}) to start over from "
           "step 0, or use a new --workdir.")
  return f"{message}; {fix}"


def incompatibility(saved: Any, abstract: Any, where: str) -> Optional[str]:
  """Whether the saved model's keys or shapes differ from ``abstract``, as the error's message.

  Only 'params' and 'batch_stats' are compared: they are plain nested dicts in
  both trees, while Orbax's metadata spells optimiser-state containers differently.

  Args:
    saved: the state's metadata tree as Orbax reads it.
    abstract: the tree to restore into (arrays or jax.ShapeDtypeStructs).
    where: the step directory, named in the message.

  Returns:
    The message naming the first difference (for a classifier that differs in
    its output dimension only, the class counts of the data and of the
    checkpoint); None when they match.
  """
  def flat(tree):
    return {jax.tree_util.keystr(k): v for name in ("params", "batch_stats") if name in tree
            for k, v in jax.tree_util.tree_flatten_with_path({name: tree[name]})[0]}
  saved_flat, want_flat = flat(saved), flat(abstract)
  missing = sorted(set(want_flat) - set(saved_flat))
  unexpected = sorted(set(saved_flat) - set(want_flat))
  if missing or unexpected:
    return (f"checkpoint {where} was written by a different model or optimiser: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
            "Use the config it was trained with (its workdir's config.json) or a fresh --workdir.")
  shapes = [(key, tuple(saved_flat[key].shape), tuple(want.shape))
            for key, want in want_flat.items()
            if getattr(saved_flat[key], "shape", None) is not None
            and tuple(saved_flat[key].shape) != tuple(want.shape)]
  # The model's own differences first: the class count is the cause only when nothing but a
  # classifier's output dimension differs.
  shapes.sort(key=lambda item: _class_count_change(*item) is not None)
  if not shapes:
    return None
  key, have, want = shapes[0]
  classes = _class_count_change(key, have, want)
  if classes is not None:
    return (f"checkpoint {where}: {key} has shape {have}, the model expects {want}: the data "
            f"set has {classes[1]} classes, the checkpoint was trained with {classes[0]}. Use the "
            "data set it was trained with or a fresh --workdir.")
  return (f"checkpoint {where}: {key} has shape {have}, the model expects {want} (different "
          "depth or width?). Use the config it was trained with or a fresh --workdir.")


# The classifiers whose output dimension is the number of classes of the data: the online probe
# of pretraining ('online_probe') and the linear probe's head (the only module of its params).
_CLASSIFIER_KEYS = re.compile(r"^\['params'\](\['online_probe'\])?\['(kernel|bias)'\]$")


def _class_count_change(key: str, have: tuple, want: tuple) -> Optional[tuple]:
  """(saved, expected) class counts when ``key`` is a classifier differing in its output only."""
  if (_CLASSIFIER_KEYS.match(key) and len(have) == len(want) and have
      and have[:-1] == want[:-1]):
    return have[-1], want[-1]
  return None
