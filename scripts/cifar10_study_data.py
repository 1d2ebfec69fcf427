r"""The image folder of scripts/cifar10_study.py: a folder, or a TFDS split exported once.

`--dataset=tfds:NAME` exports the TFDS training split once to a lossless PNG
folder, OUT/data/train/<class>/<NNNN>.png (image NNNN of the class in TFDS
order); `--dataset=folder:PATH` reads PATH/<class>/<image> as it is.
"""
import os
import shutil
from typing import Optional

from PIL import Image

from mixsiam_jax.errors import UserError
from mixsiam_jax.run import cli


class StudyError(UserError):
  """A bad study option, an unreadable data set or a failed run; the message names the fix."""


def export_tfds_split(name: str, folder: str, split: str = "train",
                      data_dir: Optional[str] = None) -> str:
  """Writes a TFDS split once as a lossless image folder, FOLDER/<class>/<NNNN>.png.

  Image NNNN of a class is the class's NNNN-th example in TFDS order (files read
  in order, no shuffling); classes are named by the label feature. The folder is
  written as FOLDER.partial and renamed when complete, so an existing FOLDER is
  complete and reused, and an interrupted export is redone from the start.

  Args:
    name: TFDS name (with an optional ':version'), e.g. 'cifar10'.
    folder: the folder to create.
    split: the TFDS split to export.
    data_dir: TFDS data folder (None: TFDS's default).

  Returns:
    The absolute path of the folder.

  Raises:
    StudyError: when TFDS cannot read the split.
  """
  folder = os.path.abspath(folder)
  if os.path.isdir(folder):
    return folder
  # Deferred: only an export needs TensorFlow Datasets (a rerun reuses the folder); it
  # imports TensorFlow, loaded first with its start-up notices dropped.
  cli.import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
  # Downloaded and prepared (array_record) on first use, as main.py does.
  tfds_prepare.ensure_prepared(f"tfds:{name}", data_dir=data_dir, flag="--dataset")
  try:
    names = tfds.builder(name, data_dir=data_dir).info.features["label"].names
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    examples = (source[i] for i in range(len(source)))  # the stored (TFDS) order
  except Exception as e:  # pylint: disable=broad-except  (bad split, unreadable files...)
    cause = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0][:300].rstrip(".")
    raise StudyError(
        f"TFDS dataset {name!r} (split {split!r}) cannot be read: {cause}. Pass "
        "--dataset=folder:PATH, or set TFDS_DATA_DIR (--tfds_data_dir) to a folder where "
        f"it is prepared (python -m mixsiam_jax.data prepare tfds:{name}).") from None
  partial = folder + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  for class_name in names:
    os.makedirs(os.path.join(partial, class_name))
  counts = [0] * len(names)
  for example in examples:
    label, image = int(example["label"]), example["image"]
    if counts[label] == 10_000:  # four-digit names keep the sorted order = TFDS order
      raise StudyError(f"TFDS {name!r} has over 10,000 {split!r} images of class "
                       f"{names[label]!r}; this export numbers at most 10,000 per class.")
    path = os.path.join(partial, names[label], f"{counts[label]:04d}.png")
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")
    counts[label] += 1
  os.rename(partial, folder)
  return folder


def data_folder(dataset: str, out: str, tfds_data_dir: Optional[str] = None) -> str:
  """The image folder the runs read: the --dataset folder, or the TFDS export in OUT/data/train.

  Args:
    dataset: --dataset, tfds:NAME or folder:PATH.
    out: the study's --out; a TFDS export goes to OUT/data/train.
    tfds_data_dir: TFDS data folder (None: TFDS's default).

  Returns:
    The absolute path of the image folder.

  Raises:
    StudyError: for a --dataset that is neither tfds:NAME nor folder:PATH, or a missing folder.
  """
  kind, sep, rest = dataset.partition(":")
  if not sep or kind not in ("tfds", "folder") or not rest:
    raise StudyError(f"--dataset={dataset!r} is neither tfds:NAME nor folder:PATH; use "
                     "--dataset=tfds:cifar10 or --dataset=folder:/path/to/cifar10/train.")
  if kind == "folder":
    if not os.path.isdir(rest):
      raise StudyError(f"--dataset={dataset}: {rest} is not a directory; pass the folder "
                       "that holds one sub-folder per class (e.g. cifar10/train).")
    return os.path.abspath(rest)
  folder = os.path.join(os.path.abspath(out), "data", "train")
  if not os.path.isdir(folder):
    print(f"exporting {dataset} (train split) to {folder} as PNG, once", flush=True)
  return export_tfds_split(rest, folder, data_dir=tfds_data_dir)
