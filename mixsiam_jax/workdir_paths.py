"""The file-system side of a workdir's path: its length, creating its directories, removing them.

Errors come back as OSErrors and one-line messages; workdir.py raises them as
WorkdirErrors naming the --workdir flag.
"""
import errno
import os
from typing import List


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
