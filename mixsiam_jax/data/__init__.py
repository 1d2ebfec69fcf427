"""Data: files or TFDS -> per-process tf.data batches for the jitted step.

Data flows one way through the modules of this package:
  folders.py       lists an image folder (PATH/<class>/<image>) and slices it
                   with the folder split grammar (options/data_names.py); plain Python.
  sources.py       opens ``tfds:NAME`` or ``folder:PATH`` as a Source (size,
                   classes, a way to read each example's bytes); DatasetInfo.
  decode.py        bytes -> RGB uint8, with unreadable files reported to a
                   BadImageLog that the caller owns.
  host_augment.py  host-side image ops: RandomResizedCrop + flip, the TensorFlow
                   twin of the device colour ops, the evaluation transform.
  canvas.py        decoded images in fixed canvases (the device resizes the crops);
                   larger images shrunk on the host and counted.
  positions.py     which example each row of each batch reads, per process.
  pipeline.py      the training stream (options in TrainDataOptions) and the
                   evaluation stream.
  batch_format.py  the training batch's keys, shapes and dtypes (also read by
                   the compile planner).
Importing any of them leaves TensorFlow's device visibility alone; programs call
pipeline.hide_accelerators_from_tensorflow() once at start-up.
"""
# The data package's errors, defined in errors.py so that the options can raise them too.
from mixsiam_jax.errors import DataChangedError, DatasetError

__all__ = ["DataChangedError", "DatasetError"]
