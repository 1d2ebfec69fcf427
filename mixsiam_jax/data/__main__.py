"""``python -m mixsiam_jax.data prepare tfds:NAME [...]``: prepares TFDS data sets without training.

For a machine with internet that prepares the data sets a run will read (then
copy its TFDS data folder to the machine without), or to prepare a large data
set (ImageNet from the archives in its manual folder) before renting
accelerators. main.py does the same on first use (data/tfds_prepare.py).
"""
import argparse
from typing import Optional, Sequence

from mixsiam_jax.run import cli


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Parses the command line and prepares each named data set in array_record.

  Args:
    argv: the arguments after the program name (None: sys.argv[1:]).

  Raises:
    DatasetError: a data set that cannot be downloaded or prepared (one line, by cli.run_tool).
  """
  parser = argparse.ArgumentParser(
      prog="python -m mixsiam_jax.data",
      description="Download and prepare TFDS data sets in array_record, where main.py reads "
                  "them (TFDS_DATA_DIR, default ~/tensorflow_datasets).")
  parser.add_argument("command", choices=["prepare"])
  parser.add_argument("datasets", nargs="+", metavar="tfds:NAME",
                      help="e.g. tfds:cifar10 tfds:imagenet2012")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data folder (default: TFDS_DATA_DIR or ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  # After the arguments (--help answers at once): TensorFlow loads with its notices dropped.
  cli.import_tensorflow()
  from mixsiam_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
  for dataset in args.datasets:
    tfds_prepare.ensure_prepared(dataset, field="dataset", data_dir=args.data_dir)
    print(f"{dataset} is prepared.")


if __name__ == "__main__":
  cli.run_tool(main)  # A UserError ends in one line; anything else is a bug.
