"""Tests of workdir/metrics_file.py: metrics.jsonl read back and cut at a resume."""
import json

import pytest

from mixsiam_jax.errors import WorkdirError
from mixsiam_jax.workdir import metrics_file


def write(path, text):
  (path / metrics_file.METRICS_FILE).write_text(text)


def test_rows_are_read_in_order_and_a_partial_last_line_is_dropped(tmp_path):
  assert metrics_file.read_metrics(str(tmp_path)) == []
  rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
  write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
  assert metrics_file.read_metrics(str(tmp_path)) == rows


def test_a_malformed_line_before_the_end_is_named(tmp_path):
  write(tmp_path, '{"step": 1}\n{"step": 2\n{"step": 3}\n')
  with pytest.raises(WorkdirError, match=r"metrics.jsonl:2 is not valid JSON"):
    metrics_file.read_metrics(str(tmp_path))
  write(tmp_path, '{"step": 1}\n[2]\n')
  with pytest.raises(WorkdirError, match=r"metrics.jsonl:2 is a list, not a JSON object"):
    metrics_file.read_metrics(str(tmp_path))


def test_truncate_drops_the_rows_after_the_resumed_step(tmp_path):
  metrics_file.truncate_metrics(str(tmp_path), 3)  # no file: nothing written
  assert not (tmp_path / metrics_file.METRICS_FILE).exists()
  write(tmp_path, "".join(json.dumps({"step": s}) + "\n" for s in (2, 4, 6)))
  metrics_file.truncate_metrics(str(tmp_path), 4)
  assert metrics_file.read_metrics(str(tmp_path)) == [{"step": 2}, {"step": 4}]
