"""Tests of mixsiam_jax/data/iterate.py: reading on a helper thread, faults retried or named."""
import os
import signal
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import logging

from mixsiam_jax.data import DatasetError, iterate
from mixsiam_jax.run import stopping


class SlowToRelease:
  """An iterator whose destructor blocks, as a tf.data iterator's can (up to 60 s)."""

  def __init__(self, items, delay, log):
    self.items, self.delay, self.log = iter(items), delay, log

  def __iter__(self):
    return self

  def __next__(self):
    return next(self.items)

  def __del__(self):
    time.sleep(self.delay)
    self.log.append(threading.current_thread().name)


class FakeDataset:
  """A stand-in for tf.data.Dataset: as_numpy_iterator() gives ``new_iterator()``."""

  def __init__(self, new_iterator):
    self.new_iterator = new_iterator

  def as_numpy_iterator(self):
    return self.new_iterator()


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
def test_the_iterator_is_released_on_the_reading_thread(how):
  released = []
  batches = iterate.numpy_batches(FakeDataset(lambda: SlowToRelease([1, 2, 3], 1.5, released)),
                                  name="fake")
  assert next(batches) == 1
  started = time.monotonic()
  if how == "close":
    batches.close()
  elif how == "drop":
    del batches
  else:
    assert list(batches) == [2, 3]
  assert time.monotonic() - started < 0.75, "the caller waited for the release"
  deadline = time.monotonic() + 10
  while not released and time.monotonic() < deadline:
    time.sleep(0.05)
  assert released == ["read fake"]


def make_flaky(failures, error):
  """make(start, checked) over elements 0..9; the first ``failures`` builds fail at element 4."""
  calls = []

  def make(start, checked):
    calls.append((start, checked))
    fail = len([c for c in calls if not c[1]]) <= failures

    def elements():
      for i in range(start, 10):
        if fail and i == 4 and not checked:
          raise error
        yield i if not checked else -i

    return FakeDataset(elements)

  return make, calls


def not_found():
  return tf.errors.NotFoundError(None, None, "Error in user-defined function passed to "
                                 "MapDataset:1 transformation with iterator: Iterator::Root::"
                                 "ParallelMapV2: /data/cat/4.jpg; No such file or directory")


def test_an_unreadable_file_is_retried_and_the_stream_continues_where_it_was():
  make, calls = make_flaky(2, not_found())
  stream = iterate.numpy_batches(make, read_retry_delays=(0.01, 0.01, 0.01))
  assert list(stream) == list(range(10))  # exactly the undisturbed elements
  assert calls == [(0, False), (4, False), (4, False)]  # rebuilt at element 4, twice


def test_a_file_that_stays_unreadable_ends_the_stream_with_one_line_naming_it():
  make, calls = make_flaky(100, not_found())
  stream = iterate.numpy_batches(make, name="--config.dataset=folder:/data",
                                 read_retry_delays=(0.01, 0.02))
  assert [next(stream) for _ in range(4)] == [0, 1, 2, 3]
  with pytest.raises(DatasetError) as error:
    next(stream)
  assert str(error.value) == (
      "--config.dataset=folder:/data stopped being readable at batch 4 (tried 3 times over 0 s): "
      "--config.dataset=folder:/data: cannot read /data/cat/4.jpg; No such file or directory.")
  assert len(calls) == 3  # the first build and two retries
  with pytest.raises(StopIteration):
    next(stream)


def test_a_batch_that_does_not_decode_is_built_again_with_checked_decoding():
  make, calls = make_flaky(1, tf.errors.InvalidArgumentError(
      None, None, "jpeg::Uncompress failed. Invalid JPEG data or crop window."))
  got = list(iterate.numpy_batches(make))
  assert got == [0, 1, 2, 3, -4, 5, 6, 7, 8, 9]  # only batch 4 comes from the checked build
  assert calls == [(0, False), (4, True), (5, False)]


def test_the_checked_decoder_reads_on_while_it_meets_new_bad_files():
  """Bad files at elements 4, 5, 7 and 20: one fault, then checked reading until 4 calm batches."""
  bad, known, calls = {4, 5, 7, 20}, set(), []

  def make(start, checked):
    calls.append((start, checked))

    def elements():
      for i in range(start, 30):
        if i in bad and not checked and i not in known:
          raise tf.errors.InvalidArgumentError(None, None, "jpeg::Uncompress failed.")
        if i in bad and checked:
          known.add(i)
        yield -i if checked else i

    return FakeDataset(elements)

  got = list(iterate.numpy_batches(make, remembered=lambda: len(known)))
  # Checked from 4 on: new bad files at 4, 5, 7; calm at 8, 9, 10, 11; fast again from 12;
  # the next new one (20) costs one more checked stretch (20-24).
  assert calls == [(0, False), (4, True), (12, False), (20, True), (25, False)]
  assert got == [0, 1, 2, 3] + [-i for i in range(4, 12)] + list(range(12, 20)) + [
      -i for i in range(20, 25)] + list(range(25, 30))


def test_a_project_error_inside_tensorflow_is_its_own_one_line_message():
  error = tf.errors.InvalidArgumentError(
      None, None, "Error in user-defined function passed to MapDataset:3: DatasetError: "
      "Unreadable image /d/x.jpg: broken. Remove it, or set "
      "--config.data.skip_bad_images=True to skip it.\nTraceback (most recent call last): ...")
  make, _ = make_flaky(100, error)
  stream = iterate.numpy_batches(make)
  with pytest.raises(DatasetError, match=r"^Unreadable image /d/x.jpg: broken\. Remove it"):
    list(stream)


def test_a_bug_keeps_its_type_and_traceback():
  make, _ = make_flaky(100, KeyError("a bug"))
  with pytest.raises(KeyError):
    list(iterate.numpy_batches(make))


class Stalled:
  def __iter__(self):
    return self

  def __next__(self):
    threading.Event().wait(30)
    raise StopIteration


def test_a_stalled_source_is_reported_and_a_signal_interrupts_the_wait(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  stream = iterate.numpy_batches(FakeDataset(Stalled), name="the stalled data",
                                 stall_warning_seconds=0.3)
  threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
  started = time.monotonic()
  with stopping.StopRequest(1) as stop, pytest.raises(stopping.Interrupted):
    with stop.waiting():
      next(stream)
  assert time.monotonic() - started < 5
  stream.close()
  stalls = [w for w in warnings if w.startswith("No batch from the stalled data")]
  assert len(stalls) >= 1, warnings
