"""Iterating a tf.data pipeline as NumPy without blocking on the iterator's release.

Releasing a tf.data iterator joins TensorFlow's autotuning thread, which wakes
only at the end of its optimisation period (doubling up to 60 s during a run):
the caller that drops the last reference can block that long. When a preempted
run returns, that is its own thread, inside the grace period. ``numpy_batches``
hands the finished iterator to a helper thread to release, so the caller goes
on at once; the interpreter still waits for that thread at a normal exit, and
``main.py`` (which ends the process with ``os._exit``) does not.
"""
import threading
from typing import Any, Iterator, List

import tensorflow as tf


def numpy_batches(dataset: tf.data.Dataset) -> Iterator[Any]:
  """Yields ``dataset.as_numpy_iterator()``'s elements; releases that iterator off this thread.

  Args:
    dataset: any tf.data pipeline.

  Returns:
    A generator of the elements as NumPy trees. When it is exhausted, closed or
    garbage-collected, the underlying tf.data iterator is released on a new
    thread named 'release-tf.data-iterator'.
  """
  # The list is the only owner of the iterator, so that handing the list over
  # hands over the iterator: no reference is left in this frame to race with.
  owner = [dataset.as_numpy_iterator()]
  try:
    yield from owner[0]
  finally:
    release_in_background(owner)


def release_in_background(owner: List[Any]) -> threading.Thread:
  """Empties ``owner`` on a new thread, so whatever it held is released there.

  Args:
    owner: a list holding the only references to objects whose release
      (destructor) may block.

  Returns:
    The started (non-daemon) thread; it ends once the objects are released.
  """
  thread = threading.Thread(target=owner.clear, name="release-tf.data-iterator")
  thread.start()
  return thread
