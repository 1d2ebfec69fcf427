"""Reading a tf.data stream on a helper thread: waits that signals can interrupt, faults named.

``numpy_batches`` returns a ``BatchStream``: a daemon thread pulls NumPy
batches from the tf.data iterator into a small queue, and the caller's
``next()`` waits on that queue in Python. So:
  * a SIGTERM or Ctrl-C reaches the main thread while it waits for a batch
    from a stalled source (a signal handler cannot run while the main thread
    is inside TensorFlow's C++), and a source that produces nothing for
    ``stall_warning_seconds`` is reported, again at doubling intervals;
  * releasing a tf.data iterator, which joins TensorFlow's autotuning thread
    (it sleeps out a period growing to 60 s, and other Python threads can be
    held up meanwhile), happens on that thread once the stream has ended,
    never on the caller's and never while batches are still wanted: an
    iterator given up after a fault is kept until then. Nothing is started at
    interpreter shutdown, and a stream closed or dropped only tells its thread
    to stop.

Faults. Given a factory ``make(start, safe)`` (the pipeline from batch
``start`` on; ``safe`` decodes every image through the checked decoder of
data/decode.py) the stream tells two faults apart:
  * a file that cannot be read (gone, renamed, permission, I/O error): the
    stream is rebuilt at the same batch after each of READ_RETRY_DELAYS (for
    network filesystems that drop a file or a folder for a moment), which
    gives exactly the batches an undisturbed stream gives (they are a pure
    function of the position); if it still fails, the stream ends with one
    DatasetError naming the file or folder. A rebuilt data set that lists
    differently (classes or files gone: DataChangedError) ends it at once;
  * a file that reads but does not decode: the stream is rebuilt at that batch
    with ``safe=True``, which names the bad image and replaces or masks it
    (skip_bad_images) or raises a DatasetError naming it. Given ``remembered``
    (data/decode.py's count of the bad files the program knows), the stream
    reads on with ``safe=True`` while it keeps meeting new bad files, and goes
    back to the fast decoder after CALM_BATCHES batches without one: a data set
    with many rotten files costs a few rebuilds, not one per file. Without it,
    only the failed batch is read with ``safe=True``. Both decoders give the
    same batches, so when the stream switches never changes what it yields.
"""
import queue
import re
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Union

from absl import logging
import tensorflow as tf

from mixsiam_jax.data import DataChangedError, DatasetError

# Seconds between the tries to rebuild a stream whose files could not be read:
# 3 s in all, then the run stops naming the file (a deleted data folder ends a
# run within 10 s of its deletion, batches read ahead included).
READ_RETRY_DELAYS = (1.0, 2.0)
# A stream that has produced nothing for this long says so (then at 2x, 4x, ...).
STALL_WARNING_SECONDS = 60.0
# Checked batches in a row that meet no new bad file before the fast decoder is used again.
CALM_BATCHES = 4

MakeDataset = Callable[[int, bool], tf.data.Dataset]

_PY_FUNCTION_ERROR = re.compile(r"DatasetError: (.*)")
_ITERATOR_PREFIX = re.compile(r"^.*?Iterator::[\w:]+: ")


def _first_line(error: tf.errors.OpError) -> str:
  """TensorFlow's message without its graph and iterator decorations."""
  line = (error.message or type(error).__name__).strip().splitlines()[0]
  line = _ITERATOR_PREFIX.sub("", line)
  return re.sub(r"\{\{[^}]*\}\}\s*", "", line).strip()


def user_error(error: BaseException, name: str) -> BaseException:
  """The one-line DatasetError a data fault means to the user; other exceptions unchanged.

  Args:
    error: what the tf.data iterator raised.
    name: what the stream reads, e.g. "--config.dataset=folder:/data/train".

  Returns:
    A DatasetError for faults of the data (a project error raised inside a
    tf.py_function, an unreadable file, a batch of nothing but bad images);
    ``error`` itself otherwise (a bug keeps its traceback).
  """
  if isinstance(error, DatasetError):
    return error
  if not isinstance(error, tf.errors.OpError):
    return error
  inner = _PY_FUNCTION_ERROR.search(error.message or "")
  if inner:
    return DatasetError(inner.group(1).strip())
  if isinstance(error, tf.errors.InvalidArgumentError):
    if "Every image of a batch was unreadable" in (error.message or ""):
      return DatasetError(f"{name}: every image of a batch was unreadable (see the warnings "
                          "above); check the data set.")
    return error
  return DatasetError(f"{name}: cannot read {_first_line(error)}.")


class BatchStream:
  """An iterator of NumPy batches read on a daemon thread (see the module docstring)."""

  def __init__(self, make: MakeDataset, *, start: int = 0, rebuildable: bool = True,
               name: str = "the data", stall_warning_seconds: float = STALL_WARNING_SECONDS,
               read_retry_delays: Sequence[float] = READ_RETRY_DELAYS, buffer: int = 1,
               remembered: Optional[Callable[[], int]] = None):
    self._make, self._start, self._rebuildable = make, start, rebuildable
    self._remembered = remembered
    self._name, self._stall_warning = name, stall_warning_seconds
    self._delays = tuple(read_retry_delays)
    self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(buffer, 1))
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._done = False

  def __iter__(self):
    return self

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    if self._thread is None:
      reader = _Reader(self._make, self._start, self._rebuildable, self._name, self._delays,
                       self._queue, self._stop, self._remembered)
      self._thread = threading.Thread(target=reader.run, name=f"read {self._name}", daemon=True)
      self._thread.start()
    started = time.monotonic()
    warn_after = self._stall_warning
    while True:
      timeout = max(0.01, min(1.0, started + warn_after - time.monotonic()))
      try:
        kind, value = self._queue.get(timeout=timeout)
        break
      except queue.Empty:
        waited = time.monotonic() - started
        if waited >= warn_after:
          logging.warning("No batch from %s for %.0f s: the source may be stalled (a network "
                          "filesystem?). Still waiting; SIGTERM or Ctrl-C saves and stops.",
                          self._name, waited)
          warn_after *= 2
    if kind == "batch":
      return value
    self._done = True
    self._stop.set()
    if kind == "end":
      raise StopIteration
    raise value

  def close(self) -> None:
    """Stops the reading thread (it releases the tf.data iterator); returns at once."""
    self._done = True
    self._stop.set()

  def __del__(self):
    self._stop.set()


class _Reader:
  """The reading thread's side of a BatchStream; it holds no reference to the stream,
  so a stream that is dropped is collected, and its __del__ stops this thread."""

  def __init__(self, make: MakeDataset, start: int, rebuildable: bool, name: str,
               delays: Sequence[float], out: "queue.Queue[Any]", stop: threading.Event,
               remembered: Optional[Callable[[], int]]):
    self._make, self._start, self._rebuildable, self._name = make, start, rebuildable, name
    self._delays, self._queue, self._stop = delays, out, stop
    self._remembered = remembered
    # Whether the live iterator decodes with ``safe=True``, and its batches since a new bad file.
    self._checked, self._calm = False, 0
    # Iterators given up after a fault: released with the last one, when the stream ends.
    self._given_up: List[Any] = []

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.5)
        return True
      except queue.Full:
        pass
    return False

  def run(self) -> None:
    """Reads batches into the queue until the data end, a fault, or a stop."""
    owner: List[Any] = []  # the only reference to the live tf.data iterator
    position, tries = self._start, 0
    try:
      while not self._stop.is_set():
        try:
          batch = self._next(owner, position)
        except StopIteration:
          self._put(("end", None))
          return
        except (DatasetError, tf.errors.OpError) as e:
          if isinstance(e, tf.errors.InvalidArgumentError) and not _is_read_error(e):
            raise
          if isinstance(e, DataChangedError) or (isinstance(e, DatasetError) and not tries):
            # A data set that lists differently, or as the program found it at its start:
            # nothing to wait for.
            raise
          self._give_up(owner)
          if not self._rebuildable or tries == len(self._delays):
            if not tries:
              raise user_error(e, self._name) from e
            raise DatasetError(
                f"{self._name} stopped being readable at batch {position} (tried {tries + 1} "
                f"times over {sum(self._delays[:tries]):.0f} s): "
                f"{str(user_error(e, self._name)).rstrip('.')}.") from e
          delay, tries = self._delays[tries], tries + 1
          logging.warning("%s (reading batch %d again in %.0f s, try %d of %d).",
                          str(user_error(e, self._name)).rstrip("."), position, delay, tries,
                          len(self._delays))
          if self._stop.wait(delay):
            return
          continue
        tries = 0
        if not self._put(("batch", batch)):
          return
        position += 1
    except BaseException as e:  # pylint: disable=broad-except  (handed to the reader)
      self._put(("error", user_error(e, self._name)))
    finally:
      # Released here, on this thread, however the stream ended.
      owner.clear()
      self._given_up.clear()

  def _next(self, owner: List[Any], position: int) -> Any:
    """The batch at ``position``; a batch with an image that does not decode is built again."""
    if not owner:
      owner.append(self._make(position, self._checked).as_numpy_iterator())
    if self._checked:
      before = self._remembered() if self._remembered else None
      batch = next(owner[0])
      learned = self._remembered is not None and self._remembered() != before
      self._calm = 0 if learned else self._calm + 1
      if self._remembered is None or self._calm >= CALM_BATCHES:
        self._checked = False  # the fast decoder again, from the next batch on
        self._give_up(owner)
      return batch
    try:
      return next(owner[0])
    except tf.errors.InvalidArgumentError as e:
      if _is_read_error(e) or not self._rebuildable or _PY_FUNCTION_ERROR.search(e.message or ""):
        raise
      # A file of this batch read but did not decode: name it through the checked decoder.
      self._give_up(owner)
      self._checked, self._calm = True, 0
      return self._next(owner, position)

  def _give_up(self, owner: List[Any]) -> None:
    """Moves the iterator out of ``owner`` into the ones released when the stream ends."""
    self._given_up.extend(owner)
    owner.clear()


def _is_read_error(error: BaseException) -> bool:
  """Whether an InvalidArgumentError is a failed read (e.g. a folder where a file was)."""
  return "ReadFile" in (getattr(error, "message", "") or "")


def numpy_batches(data: Union[tf.data.Dataset, MakeDataset], *, start: int = 0,
                  first: Optional[tf.data.Dataset] = None, name: str = "the data",
                  **stream_options) -> BatchStream:
  """The elements of a tf.data pipeline as NumPy trees, read on a helper thread.

  Args:
    data: a tf.data.Dataset (read once, as it is), or ``make(start, safe)``
      building the pipeline from element ``start`` on (faults then handled as
      the module docstring says).
    start: the position the stream starts at (passed to ``make``).
    first: ``make(start, False)`` where the caller has built it already (to
      check the data before writing anything): read first instead of built again.
    name: what the stream reads, in messages (e.g. "--config.dataset=folder:X").
    **stream_options: stall_warning_seconds, read_retry_delays, buffer, remembered
      (see BatchStream and the module docstring).

  Returns:
    The stream; close() it when done (dropping it also stops its thread).
  """
  if hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
    dataset = data
    return BatchStream(lambda position, safe: dataset, start=start, rebuildable=False, name=name,
                       **stream_options)
  if first is not None:
    make, unread = data, [first]

    def data(position, checked):  # pylint: disable=function-redefined
      if unread and position == start and not checked:
        return unread.pop()
      return make(position, checked)

  return BatchStream(data, start=start, name=name, **stream_options)
