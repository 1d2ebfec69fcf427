"""One run per workdir: an exclusive lock on ``<workdir>/.lock``.

main.py holds the lock around every program, on process 0 only: the other
processes of a multi-process run work in process 0's workdir and must not
contend with it. A second run on a busy workdir is refused at once.

The lock is flock(2) on the file, so the kernel drops it when its owner dies,
even by SIGKILL; the file's content (pid, host, start time) only tells the next
run who holds it, and names the dead owner when a left-over file is taken over.
On a file system without locks the content alone decides, and a live owner is
then recognised only on the same host.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from typing import Any, Dict, Iterator, Optional

from absl import logging

from mixsiam_jax.workdir import paths
from mixsiam_jax.workdir.run_files import WorkdirError, check_workdir, create_directories

LOCK_FILE = ".lock"
# flock fails with these where the file system has no locks (some FUSE and NFS mounts).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextlib.contextmanager
def lock_workdir(workdir: str) -> Iterator[str]:
  """Holds the workdir's lock for the duration of the ``with`` block.

  Creates the workdir if needed; on exit releases the lock, deletes the lock
  file, and removes the directories this call created if nothing else was
  written into them (a run refused by its checks leaves no trace). A nested
  call from the process that holds the lock is a no-op.

  Args:
    workdir: the run's directory.

  Yields:
    The absolute path of the workdir.

  Raises:
    WorkdirError: another live run holds the lock (naming the lock file and its
      owner's pid and host), or the workdir cannot be created or written.
  """
  path = check_workdir(workdir)
  created = create_directories(path, workdir)
  lock_path = os.path.join(path, LOCK_FILE)
  try:
    fd = _acquire(lock_path)
  except BaseException:
    paths.remove(created)
    raise
  try:
    yield path
  finally:
    if fd is not None:
      _release(fd, lock_path)
    paths.remove(created)


def _parse(text: str) -> Optional[Dict[str, Any]]:
  try:
    owner = json.loads(text)
  except json.JSONDecodeError:
    return None
  return owner if isinstance(owner, dict) and "pid" in owner else None


def _describe(owner: Optional[Dict[str, Any]]) -> str:
  if not owner:
    return "owner unknown"
  return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"


def _is_me(owner: Optional[Dict[str, Any]]) -> bool:
  return (bool(owner) and owner.get("pid") == os.getpid()
          and owner.get("host") == socket.gethostname())


def _alive_here(owner: Dict[str, Any]) -> bool:
  """False only for an owner on this host whose pid no longer exists."""
  if owner.get("host") != socket.gethostname():
    return True
  try:
    os.kill(int(owner["pid"]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError):
    return True
  return True


def _read_fd(fd: int) -> Optional[Dict[str, Any]]:
  os.lseek(fd, 0, os.SEEK_SET)
  return _parse(os.read(fd, 1 << 16).decode("utf-8", "replace"))


def _busy(lock_path: str, owner: Optional[Dict[str, Any]]) -> WorkdirError:
  return WorkdirError(
      f"this workdir is in use by another run ({_describe(owner)}; lock file {lock_path}): "
      "wait for it to end or stop it, or choose another --workdir. If that run is no longer "
      "running, delete the lock file.")


def _acquire(lock_path: str) -> Optional[int]:
  """Takes the lock; returns its file descriptor (None when this process holds it already)."""
  while True:
    try:
      fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"{lock_path} could not be created ({e.strerror}); "
                         "choose a --workdir you can write to.") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _read_fd(fd)
      os.close(fd)
      if _is_me(owner):
        return None
      raise _busy(lock_path, owner) from None
    except OSError as e:
      if e.errno not in _NO_LOCKS:
        os.close(fd)
        raise
      owner = _read_fd(fd)
      if _is_me(owner):
        os.close(fd)
        return None
      if owner and _alive_here(owner):
        os.close(fd)
        raise _busy(lock_path, owner) from None
      logging.warning("%s: the file system has no locks; the lock file's content alone keeps "
                      "a second run out.", lock_path)
    # The previous owner may have deleted the file between our open and flock;
    # then the lock is on a file nobody else will see: lock the current one.
    try:
      same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if not same:
      os.close(fd)
      continue
    previous = _read_fd(fd)
    if previous:
      logging.warning("Took over %s from a run that is no longer running (%s).", lock_path,
                      _describe(previous))
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd


def _release(fd: int, lock_path: str) -> None:
  # Delete before unlocking: a run waiting on this file then sees it gone and
  # locks a fresh one (see the inode check in _acquire).
  try:
    os.unlink(lock_path)
  except FileNotFoundError:
    pass
  except OSError as e:
    # A workdir that stopped accepting writes (read-only, gone): the lock stays behind,
    # names this process, which is ending, and the next run takes it over (_acquire).
    logging.warning("Could not remove %s (%s); it is stale once this process ends, and the "
                    "next run takes it over.", lock_path, e.strerror)
  os.close(fd)
