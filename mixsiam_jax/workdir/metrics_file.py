"""metrics.jsonl: the metrics a run logged, one JSON object per logged step.

run/metric_writer.py appends the rows; programs, plot.py and the studies read
them back; a resumed run first drops the rows after its start step, which it
logs again.
"""
import json
import os
from typing import Any, Dict, List

from mixsiam_jax.errors import WorkdirError
from mixsiam_jax.workdir import paths

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  """Reads metrics.jsonl of ``workdir`` (an empty list if absent).

  A partial last line (the process was killed while writing it) is dropped;
  any other malformed line is an error naming the file and line.

  Args:
    workdir: a run's directory.

  Returns:
    The rows in file order.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
  rows = []
  for i, (number, line) in enumerate(lines):
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1 and not line.endswith("\n"):
        break  # interrupted write: the step is logged again when the run resumes
      raise WorkdirError(f"{path}:{number} is not valid JSON ({e}); fix or delete that line.") from e
    if not isinstance(row, dict):
      raise WorkdirError(f"{path}:{number} is a {type(row).__name__}, not a JSON object.")
    rows.append(row)
  return rows


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops metric lines after ``last_step``: a resumed run logs those steps again."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  rows = read_metrics(workdir)
  kept = [r for r in rows if r.get("step", 0) <= last_step]
  if len(kept) != len(rows):
    paths.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
