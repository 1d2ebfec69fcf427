"""Tests of mixsiam_jax/data/iterate.py: NumPy iteration that never blocks on the release."""
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from mixsiam_jax.data import iterate


class SlowToRelease:
  """An iterator whose destructor blocks, as a tf.data iterator's can (up to 60 s)."""

  def __init__(self, items, delay):
    self.items, self.delay = iter(items), delay

  def __iter__(self):
    return self

  def __next__(self):
    return next(self.items)

  def __del__(self):
    time.sleep(self.delay)
    SlowToRelease.log.append(threading.current_thread().name)
    SlowToRelease.done.set()


class FakeDataset:
  def __init__(self, items, delay):
    self.items, self.delay = items, delay

  def as_numpy_iterator(self):
    return SlowToRelease(self.items, self.delay)


@pytest.fixture
def release_log():
  SlowToRelease.log, SlowToRelease.done = [], threading.Event()
  yield SlowToRelease


def test_yields_the_same_elements_as_tf_data():
  ds = tf.data.Dataset.range(10).map(lambda x: {"x": x * 2, "y": tf.fill([2], x)},
                                     num_parallel_calls=tf.data.AUTOTUNE).batch(4)
  got = list(iterate.numpy_batches(ds))
  want = list(ds.as_numpy_iterator())
  assert len(got) == len(want) == 3
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["x"], w["x"])
    np.testing.assert_array_equal(g["y"], w["y"])
  np.testing.assert_array_equal(got[-1]["x"], [16, 18])


@pytest.mark.parametrize("how", ["close", "drop", "exhaust"])
def test_a_slow_release_happens_on_a_helper_thread(release_log, how):
  batches = iterate.numpy_batches(FakeDataset([1, 2, 3], delay=1.5))
  assert next(batches) == 1
  started = time.monotonic()
  if how == "close":
    batches.close()
  elif how == "drop":
    del batches
  else:
    assert list(batches) == [2, 3]
  assert time.monotonic() - started < 0.75, "the caller waited for the release"
  assert release_log.done.wait(10.0), "the iterator was never released"
  assert release_log.log == ["release-tf.data-iterator"]


def test_release_in_background_empties_the_owner_on_its_thread(release_log):
  owner = [SlowToRelease([], delay=0.0)]
  thread = iterate.release_in_background(owner)
  thread.join(10.0)
  assert owner == [] and not thread.is_alive()
  assert release_log.log == ["release-tf.data-iterator"]
