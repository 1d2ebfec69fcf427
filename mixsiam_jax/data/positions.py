"""Where the streams of pipeline.py read: the example of each row of each batch, per process.

Training: global position ``g`` (row ``g % B`` of step ``g // B``) is example
``index_shuffle(g % n, seed=(seed, g // n))`` of epoch ``g // n`` (random
access), or the next example of a seeded per-epoch shuffle of this process's
share (TFRecords). Evaluation: global batch ``b`` holds examples
``[b * G, (b + 1) * G)`` in order, process ``p`` its ``p``-th block. The
pipeline's module docstring states what follows for determinism and resumes.
"""
import tensorflow as tf

from mixsiam_jax.data import sources


def random_access_locator(n: int, *, seed: int, process_index: int, process_count: int,
                          local_batch: int):
  """``locate(position) -> {'index', 'epoch'}`` (int64) of this process's local ``position``.

  Args:
    n: the number of examples.
    seed: the data seed.
    process_index, process_count: this process's shard.
    local_batch: rows per step on this process.

  Returns:
    The function, for a map over this process's local positions (int64 scalars).
  """
  def locate(position):
    # Local position -> global position: this process's rows of the global batch.
    step, row = position // local_batch, position % local_batch
    position = (step * process_count + process_index) * local_batch + row
    epoch = position // n
    slot = position % n
    index = tf.random.experimental.index_shuffle(
        slot, seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=n - 1)
    return {"index": tf.cast(index, tf.int64), "epoch": epoch}

  return locate


def sequential_stream(source: sources.Source, *, seed: int, start: int, process_index: int,
                      process_count: int, shuffle_buffer: int) -> tf.data.Dataset:
  """Infinite stream of raw elements (with 'epoch') for a TFRecord-backed source.

  Args:
    source: a source without random access (``source.sequential``).
    seed: the data seed.
    start: this process's first position (start step x local batch).
    process_index, process_count: this process's shard.
    shuffle_buffer: the buffer of each epoch's seeded shuffle.

  Returns:
    The source's elements with their 'epoch', this process's share in epoch order.
  """
  n_local = source.info.num_examples // process_count
  shard = source.sequential.filter(lambda ex: ex["index"] % process_count == process_index)

  def epoch_ds(epoch):
    epoch_seed = tf.bitwise.bitwise_xor(tf.constant(seed, tf.int64) * 1000003, epoch)
    ds = shard.take(n_local).shuffle(min(shuffle_buffer, n_local), seed=epoch_seed,
                                     reshuffle_each_iteration=False)
    return ds.map(lambda ex: dict(ex, epoch=epoch))

  first_epoch, offset = divmod(start, n_local)
  first = epoch_ds(tf.constant(first_epoch, tf.int64)).skip(offset)
  rest = tf.data.Dataset.counter(first_epoch + 1, dtype=tf.int64).flat_map(epoch_ds)
  return first.concatenate(rest)


def eval_elements(source: sources.Source, *, global_batch_size: int, local_batch: int,
                  process_index: int, start_batch: int) -> tf.data.Dataset:
  """This process's evaluation elements from batch ``start_batch`` on, padded to whole batches.

  Args:
    source: the data set.
    global_batch_size: batch over all processes.
    local_batch: this process's rows of each batch (a contiguous block).
    process_index: this process.
    start_batch: the first batch.

  Returns:
    The stream of {'bytes', 'label', 'name', 'valid'}; padding has valid False.
  """
  n = source.info.num_examples
  num_batches = -(-n // global_batch_size)
  block_start = process_index * local_batch

  def position(k):  # k-th element of this process -> global position.
    return (k // local_batch) * global_batch_size + block_start + k % local_batch

  if source.fetch is not None:
    def read(k):
      g = position(k)
      data, label, name = source.fetch(tf.minimum(g, n - 1))
      return {"bytes": data, "label": label, "name": name, "valid": g < n}

    return tf.data.Dataset.range(start_batch * local_batch, num_batches * local_batch).map(
        read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  mine = source.sequential.filter(
      lambda ex: (ex["index"] % global_batch_size) // local_batch == process_index)
  mine = mine.map(lambda ex: {"bytes": ex["bytes"], "label": ex["label"], "name": ex["name"],
                              "valid": tf.constant(True)})
  # Real examples of this process: every batch but the last is full.
  last = (num_batches - 1) * global_batch_size + block_start
  count = (num_batches - 1) * local_batch + min(max(n - last, 0), local_batch)
  pad = tf.data.Dataset.from_tensors({"bytes": tf.constant(b""), "label": tf.constant(-1),
                                      "name": tf.constant("padding"),
                                      "valid": tf.constant(False)})
  return mine.concatenate(pad.repeat(num_batches * local_batch - count)).skip(
      start_batch * local_batch)
