"""The run's metric writers: TensorBoard, the console, and metrics.jsonl.

metrics.jsonl (workdir/metrics_file.py) holds one JSON object per logged step;
metrics_file.read_metrics reads it back. clu loads TensorFlow, so this module is
kept apart from the light workdir checks.
"""
import json
import math
import os
from typing import Any, Dict, Mapping, Optional

from clu import metric_writers
from clu.metric_writers import interface

from mixsiam_jax.workdir import paths
from mixsiam_jax.workdir.metrics_file import METRICS_FILE


def _jsonable(value: Any) -> Any:
  value = float(value) if not isinstance(value, (int, str)) else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible as strings.
  return value


class JsonlWriter(interface.MetricWriter):
  """clu MetricWriter appending one JSON object per step to metrics.jsonl.

  Scalars written for the same step (training metrics, then kNN accuracy) are
  merged into one line, written when a later step arrives or on flush. A step
  flushed already (the loop flushes before each checkpoint, and evaluates
  after it) gets its later scalars merged into its line, which is rewritten
  atomically. Images, videos, audio, texts and histograms belong in
  TensorBoard and are not written.
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, METRICS_FILE)
    self._step: Optional[int] = None
    self._row: Dict[str, Any] = {}
    self._flushed: Optional[Dict[str, Any]] = None  # the last line written

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    step = int(step)
    if self._step is not None and step != self._step:
      self.flush()
    self._step = step
    self._row.update({k: _jsonable(v) for k, v in scalars.items()})

  def flush(self):
    if self._step is None:
      return
    row = {"step": self._step, **self._row}
    if self._flushed is not None and self._flushed["step"] == self._step:
      row = {**self._flushed, **self._row}
      with open(self._path) as f:
        lines = f.read().splitlines(keepends=True)
      paths.atomic_write_text(self._path, "".join(lines[:-1]) + json.dumps(row) + "\n")
    else:
      with open(self._path, "a") as f:
        f.write(json.dumps(row) + "\n")
    self._flushed = row
    self._step, self._row = None, {}

  def close(self):
    self.flush()

  # Non-scalar summaries go to TensorBoard only.
  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams


def create_writer(workdir: str, is_main_process: bool) -> metric_writers.MetricWriter:
  """TensorBoard + console + metrics.jsonl on the main process, nothing elsewhere.

  Args:
    workdir: the run's directory.
    is_main_process: jax.process_index() == 0.

  Returns:
    A clu MetricWriter.
  """
  if not is_main_process:
    # Every process computes the same metrics; one console is enough.
    return metric_writers.MultiWriter([])
  default = metric_writers.create_default_writer(workdir, asynchronous=False)
  return metric_writers.MultiWriter([default, JsonlWriter(workdir)])
