"""Tests of mixsiam_jax/run/stderr_filter.py: libjpeg's own lines never reach the console."""
import random
import shutil
import subprocess
import sys

import pytest

from tests.test_main import TINY, run_main

CHILD = r"""
import os, sys
from mixsiam_jax.run import stderr_filter
with stderr_filter.dropped():
  os.write(2, b"keep 1\nCorrupt JPEG data: 249 extraneous bytes before marker 0x67\n")
  print("keep 2", file=sys.stderr, flush=True)
  os.write(2, b"Unsupported marker type 0x67\nInvalid SOS parameters for sequential JPEG\nlast")
print("after", file=sys.stderr)
"""


def test_libjpeg_lines_are_dropped_and_the_rest_kept_in_order():
  result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, check=True)
  assert result.stderr == "keep 1\nkeep 2\nlastafter\n"


def _rotten_jpeg(good: bytes) -> bytes:
  """The first third of a JPEG, random bytes, and the end marker: markers intact, data corrupt."""
  rng = random.Random(0)
  keep = len(good) // 3
  return good[:keep] + bytes(rng.randrange(256) for _ in range(len(good) - keep - 2)) + b"\xff\xd9"


@pytest.mark.slow
def test_a_run_on_a_rotten_jpeg_names_it_once_without_libjpegs_lines(cifar_jpeg_folder, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(cifar_jpeg_folder, data)
  bad = data / "cat" / "0003.jpg"
  bad.write_bytes(_rotten_jpeg(bad.read_bytes()))
  decode = ("import tensorflow as tf, sys; tf.io.decode_jpeg(tf.io.read_file(sys.argv[1]))")
  unfiltered = subprocess.run([sys.executable, "-c", decode, str(bad)], capture_output=True,
                              text=True, timeout=120)
  assert "Corrupt JPEG data" in unfiltered.stderr  # what libjpeg prints without the filter
  result = run_main(*TINY, f"--config.dataset=folder:{data}", f"--workdir={tmp_path / 'run'}",
                    timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Skipping unreadable image {bad}" in result.stderr
  assert "Corrupt JPEG data" not in result.stderr and "marker type" not in result.stderr
