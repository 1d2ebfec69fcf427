"""The file-system side of a workdir's path: its length, creating its directories, removing
them, and the one place where a workdir that stops accepting writes ends the run.

Errors come back as OSErrors and one-line messages; run_files.py raises them as
WorkdirErrors naming the --workdir flag.
"""
import contextlib
import errno
import os
import shutil
import tempfile
from typing import Callable, Iterator, List, Optional

from mixsiam_jax.errors import UserError

# The OS errors of a storage that stopped accepting writes (full, read-only, no permission).
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
# The same failures as TensorFlow's file writers (the TensorBoard event file) report them.
TF_WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                     "Permission denied", "Input/output error")


class WorkdirWriteError(UserError):
  """The workdir stopped accepting writes (full, read-only, permission); the run stopped."""
  exit_status = 4


def too_long(path: str, existing: str) -> bool:
  """Whether the file system holding ``existing`` refuses ``path`` (a name or the whole)."""
  def limit(name, default):
    try:
      return os.pathconf(existing, name)
    except (OSError, ValueError):
      return default
  encoded = os.fsencode(path)
  # PATH_MAX counts the terminating NUL byte.
  return (len(encoded) >= limit("PC_PATH_MAX", 4096)
          or max(len(part) for part in encoded.split(b"/")) > limit("PC_NAME_MAX", 255))


def create(path: str) -> List[str]:
  """Creates ``path`` and its missing parents; on failure removes those it created.

  Args:
    path: the absolute directory to create.

  Returns:
    The directories created, outermost first ([] if ``path`` existed).

  Raises:
    OSError: a directory could not be created (see creation_message); nothing
      created is left behind.
  """
  missing = []
  existing = path
  while not os.path.isdir(existing):
    missing.append(existing)
    existing = os.path.dirname(existing)
  created = []
  for directory in reversed(missing):
    try:
      os.mkdir(directory)
    except OSError as e:
      if isinstance(e, FileExistsError) and os.path.isdir(directory):
        continue  # another process made it meanwhile
      remove(created)
      raise
    created.append(directory)
  return created


def remove(created: List[str]) -> None:
  """Removes the directories ``create`` made, deepest first, while they are empty."""
  for directory in reversed(created):
    try:
      os.rmdir(directory)
    except OSError:  # not empty: something was written into it, keep it
      return


def creation_message(workdir: str, path: str, error: OSError) -> str:
  """The one-line message for a workdir that could not be created.

  Args:
    workdir: the --workdir value as given.
    path: its absolute path.
    error: why it could not be created (ENAMETOOLONG: the path is too long).

  Returns:
    The message, naming the flag and the reason.
  """
  if error.errno == errno.ENAMETOOLONG:
    return (f"--workdir={_shorten(workdir)} is too long for the file system "
            f"({len(path)} characters; a name may have at most 255 and a path "
            "about 4096): choose a shorter path.")
  return (f"--workdir={_shorten(workdir)} could not be created ({error.strerror} "
          f"at {_shorten(str(error.filename or path))}); choose a directory you "
          "can write to.")


def _shorten(text: str, limit: int = 200) -> str:
  """``text``, its middle elided when longer than ``limit`` (a path in a one-line message)."""
  if len(text) <= limit:
    return text
  half = (limit - 5) // 2
  return f"{text[:half]} ... {text[-half:]}"


@contextlib.contextmanager
def write_failures_end_the_run(workdir: str, newest_step: Callable[[], int]) -> Iterator[None]:
  """Turns a failed write into the workdir, by any writer, into one WorkdirWriteError.

  metrics.jsonl, the TensorBoard event file, config.json, data.json,
  config_changes.jsonl and the lock are written by different code; a full,
  read-only or forbidden file system fails each of them with an OSError (or, for
  TensorFlow's writers, an error carrying the OS message). One place, around
  the whole program, names the path, the OS error, the free space and the
  newest intact checkpoint (checkpoint writes have their own message,
  storage.CheckpointSaveError, with the same status).

  Args:
    workdir: the --workdir value.
    newest_step: returns the newest intact checkpoint step (0: none).

  Raises:
    WorkdirWriteError: a write into the workdir failed (exit status 4).
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (re-raised unless it is a write failure)
    message = write_failure_message(e, workdir, newest_step)
    if message is None:
      raise
    raise WorkdirWriteError(message) from e


def write_failure_message(error: BaseException, workdir: str,
                          newest_step: Callable[[], int]) -> Optional[str]:
  """The one-line message if ``error`` is a failed write into ``workdir``, else None."""
  root = os.path.abspath(workdir)
  if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
    if error.filename:
      path = os.path.abspath(str(error.filename))
      if path != root and not path.startswith(root + os.sep):
        return None  # not the workdir's (e.g. the data or a cache)
      what = f"cannot write {_shorten(path)}: {error.strerror}"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
      # A failed write() or close() names no file; during a run these come from its writers.
      what = f"cannot write into the workdir {_shorten(root)}: {error.strerror}"
    else:
      return None
  elif type(error).__module__.startswith("tensorflow") and any(
      marker in str(error) for marker in TF_WRITE_FAILURES):
    reason = next(marker for marker in TF_WRITE_FAILURES if marker in str(error))
    what = f"cannot write the TensorBoard event file in {_shorten(root)}: {reason}"
  else:
    return None
  free = f", {free_space(root)} free"
  try:
    step = newest_step()
    saved = (f"the newest intact checkpoint is step {step}" if step else
             "no checkpoint was written yet")
  except Exception as e:  # pylint: disable=broad-except  (the message must still come out)
    saved = f"the newest checkpoint could not be read ({str(e).splitlines()[0][:200]})"
  return (f"{what}{free}; {saved}. Make the workdir writable (free space, permissions, "
          "remount) and rerun the same command to resume.")


def free_space(directory: str) -> str:
  """The free space of the file system holding ``directory`` (or its nearest existing parent),
  e.g. '980.0 KiB'; 'unknown space' if it cannot be read."""
  path = directory
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return format_bytes(shutil.disk_usage(path or "/").free)
  except OSError:
    return "unknown space"


def format_bytes(size: float) -> str:
  """'512 bytes', '980.0 KiB', '162.2 MiB', ... (powers of 1024)."""
  for unit in ("bytes", "KiB", "MiB", "GiB"):
    if size < 1024 or unit == "GiB":
      break
    size /= 1024.0
  return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` via a temporary file and a rename, never half-written."""
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary result files
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
