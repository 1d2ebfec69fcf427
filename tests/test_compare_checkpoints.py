"""scripts/compare_checkpoints.py: bit-for-bit comparison of two workdirs' newest checkpoints."""
import numpy as np

from scripts import compare_checkpoints


def test_identical_trees_give_no_lines():
  a = {"params": np.arange(4, dtype=np.float32), "step": np.asarray(6)}
  assert compare_checkpoints.compare(a, {k: v.copy() for k, v in a.items()}) == []


def test_every_kind_of_difference_is_named():
  a = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float32), "only_a": np.zeros(1)}
  b = {"w": np.array([0, 0, np.float32(1e-7)], np.float32), "b": np.zeros(2, np.float64),
       "only_b": np.zeros(1)}
  lines = compare_checkpoints.compare(a, b)
  assert "only in A: only_a" in lines and "only in B: only_b" in lines
  assert any(line.startswith("b: float32[2] vs float64[2]") for line in lines)
  # A difference in the last bit is a difference.
  assert any(line.startswith("w: max |a - b| = 1e-07") for line in lines)
