"""Tests of mixsiam_jax/run/metric_writer.py: metrics.jsonl holds one object per logged step."""
import json

from mixsiam_jax.run import metric_writer


def lines(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_scalars_of_one_step_are_one_line_even_across_a_flush(tmp_path):
  writer = metric_writer.JsonlWriter(str(tmp_path))
  writer.write_scalars(3, {"loss": 1.0})
  writer.write_scalars(3, {"lr": 0.5})
  writer.flush()  # the loop flushes before the checkpoint of step 3 ...
  assert lines(tmp_path) == [{"step": 3, "loss": 1.0, "lr": 0.5}]
  writer.write_scalars(3, {"knn_top1": 40.0})  # ... and evaluates after it
  writer.write_scalars(6, {"loss": float("nan")})
  writer.close()
  assert lines(tmp_path) == [{"step": 3, "loss": 1.0, "lr": 0.5, "knn_top1": 40.0},
                             {"step": 6, "loss": "nan"}]
