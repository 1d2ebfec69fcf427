"""The names a config gives data by, checked without TensorFlow or the files.

Data sets are ``tfds:NAME`` or ``folder:PATH``; the evaluation transforms are
named in EVAL_TRANSFORMS; a folder's split string follows the grammar below.
The options check these when they are built, so that a misspelt data set or
split is refused before anything is opened; the data package reads the data
they name (data/folders.py slices a folder by parse_folder_split).

Splits. The split string selects a slice of each class's file list, so a
held-out part keeps the class balance of the folder:
  * ``''``, ``train``, ``all`` (any bare name; the name is ignored, there is
    only one folder): every file.
  * ``[A:B]`` or ``NAME[A:B]`` (NAME ignored), Python slice semantics within
    each class: ``[:4500]`` the first 4500 files of every class, ``[4500:]``
    the rest, ``[-500:]`` the last 500, ``[10:20]``; a class with fewer files
    gets what the slice leaves of it.
  * Percentages ``[:90%]``, ``[90%:]``, ``[10%:20%]`` (decimals allowed, both
    bounds in %): a bound of p% of a class of n files is ``round(p * n / 100)``
    (Python's round, halves to even), exactly TFDS's default 'closest' rounding,
    so ``[:p%]`` and ``[p%:]`` are complementary, disjoint and cover each class.
"""
import re
from typing import Optional, Tuple

from mixsiam_jax.errors import DatasetError

FOLDER_SPLIT_SYNTAX = (
    "'' / 'train' / 'all' (the whole folder) or a per-class slice '[A:B]' or 'NAME[A:B]' "
    "(NAME ignored) with A, B integers or percentages, e.g. '[:4500]', '[4500:]', '[-500:]', "
    "'[:90%]', '[90%:]', '[10:20]', 'train[:90%]'")
_SPLIT_RE = re.compile(r"^(?P<name>[\w-]*)\s*(?:\[(?P<from>[^\[\]:]*):(?P<to>[^\[\]:]*)\])?$")
_BOUND_RE = re.compile(r"^(?P<val>[+-]?\d+(?:\.\d*)?)(?P<pct>%?)$")

# The deterministic transforms evaluation images are read with (data/host_augment.py).
EVAL_TRANSFORMS = ("identity", "resize_center_crop")


def parse_dataset(dataset: str, field: str = "dataset") -> Tuple[str, str]:
  """Splits a data set name: 'tfds:NAME' | 'folder:PATH' -> (kind, rest).

  Args:
    dataset: the name.
    field: the config field that gave it, named in the error.

  Returns:
    ('tfds' or 'folder', NAME or PATH).

  Raises:
    DatasetError: naming ``field`` and the accepted forms.
  """
  kind, sep, rest = dataset.partition(":") if isinstance(dataset, str) else ("", "", "")
  if not sep or kind not in ("tfds", "folder") or not rest:
    raise DatasetError(f"{field}={dataset!r} must be 'tfds:NAME' (e.g. tfds:cifar10) or "
                       "'folder:PATH' (PATH/<class>/<image>).")
  return kind, rest


def check_split(dataset: str, split: str, dataset_field: str, split_field: str) -> None:
  """Checks a data set name and, for a folder, its split string (naming each one's field)."""
  kind, _ = parse_dataset(dataset, dataset_field)
  if kind == "folder":
    parse_folder_split(split, split_field)


def parse_folder_split(split: str, field: str = "train_split"
                       ) -> Tuple[Optional[float], Optional[float], bool]:
  """Parses a folder split string (see "Splits" in the module docstring).

  Args:
    split: e.g. '', 'train', '[:4500]', 'train[90%:]'.
    field: the config field that gave ``split``, named in the error.

  Returns:
    (start, stop, percent): slice bounds (None = open), in percent if
    ``percent`` else in files.

  Raises:
    DatasetError: naming ``split`` and the accepted syntax.
  """
  def bad(why):
    return DatasetError(f"{field}={split!r} is not a valid split of a folder ({why}). "
                        f"Accepted: {FOLDER_SPLIT_SYNTAX}.")

  match = _SPLIT_RE.match((split or "").strip())
  if not match:
    raise bad("not NAME or [A:B]")
  if match.group("from") is None:
    return None, None, False
  bounds, units = [], set()
  for text in (match.group("from").strip(), match.group("to").strip()):
    if not text:
      bounds.append(None)
      continue
    b = _BOUND_RE.match(text)
    if not b:
      raise bad(f"bound {text!r} is not an integer or a percentage")
    percent = bool(b.group("pct"))
    units.add(percent)
    if percent:
      value = float(b.group("val"))
      if abs(value) > 100:
        raise bad(f"bound {text!r} is outside [-100%, 100%]")
    elif "." in b.group("val"):
      raise bad(f"bound {text!r}: file counts must be integers")
    else:
      value = int(b.group("val"))
    bounds.append(value)
  if len(units) > 1:
    raise bad("both bounds must be counts or both percentages")
  return bounds[0], bounds[1], units == {True}
