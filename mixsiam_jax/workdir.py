"""The workdir: its checks, the resolved config, and metrics.jsonl.

A workdir holds checkpoints/ (Orbax), TensorBoard event files, metrics.jsonl
(one JSON object per logged step) and config.json (the resolved config of the
first run). Rerunning in the same workdir resumes; config changes that would
make the resumed run a different experiment are refused.
"""
import json
import math
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from clu import metric_writers
from clu.metric_writers import interface

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_CHANGES_FILE = "config_changes.jsonl"

# Fields that may change when a run is resumed: they do not change what is trained.
SAFE_TO_CHANGE = (
    "log_every_steps", "checkpoint_every_steps", "eval_every_steps", "eval_dataset",
    "eval_split", "eval_batch_size", "knn", "keep_checkpoints", "keep_checkpoints_every_steps",
    "profile_steps", "data.prefetch", "data.skip_bad_images", "image_summary_every_steps",
    "async_checkpointing", "model.remat", "model.conv_impl",
)


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked."""


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` if needed and checks that it is writable.

  Args:
    workdir: path of the run's directory.

  Returns:
    The absolute path.

  Raises:
    WorkdirError: the path is a file, or not writable.
  """
  if not workdir:
    raise WorkdirError("--workdir is required: the directory for checkpoints and logs.")
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; choose another path.")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
      pass
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir} is not writable ({e.strerror}); "
                       "choose a directory you can write to.") from None
  return path


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` via a temporary file and a rename, never half-written."""
  directory = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary result files
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def read_config(workdir: str) -> Optional[Dict[str, Any]]:
  """Returns the config.json of ``workdir`` as a dict, or None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise WorkdirError(f"{path} is unreadable ({e}); restore it or use a fresh --workdir.") from None


def flatten_config(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """A nested config dict as {'dotted.name': value}; tuples become lists (as in JSON)."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten_config(value, name + "."))
    else:
      flat[name] = list(value) if isinstance(value, tuple) else value
  return flat


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[Tuple[str, Any, Any]]:
  """Lists (field, old value, new value) for every field that differs (dotted names)."""
  a, b = flatten_config(old), flatten_config(new)
  missing = object()
  diffs = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, missing), b.get(key, missing)
    if va != vb:
      diffs.append((key, None if va is missing else va, None if vb is missing else vb))
  return diffs


def _is_safe(field: str) -> bool:
  return any(field == s or field.startswith(s + ".") for s in SAFE_TO_CHANGE)


def check_resume_config(old: Mapping[str, Any], new: Mapping[str, Any]
                        ) -> List[Tuple[str, Any, Any]]:
  """Refuses a resume whose config changes what is trained.

  Args:
    old: the config.json already in the workdir.
    new: the config of this run (as a dict).

  Returns:
    The safe differences (logging, evaluation, run length), to be recorded.

  Raises:
    WorkdirError: listing every unsafe difference.
  """
  diffs = config_differences(old, new)
  unsafe = [d for d in diffs if not _is_safe(d[0])]
  if unsafe:
    lines = "\n".join(f"  {k}: {a!r} in the workdir, {b!r} now" for k, a, b in unsafe)
    raise WorkdirError(
        "This workdir holds a run with a different configuration; resuming would mix two "
        f"experiments:\n{lines}\nUse a new --workdir, or rerun with the workdir's settings "
        "(see its config.json).")
  return [d for d in diffs if _is_safe(d[0])]


def save_config(workdir: str, config: Mapping[str, Any], step: int) -> None:
  """Writes config.json on the first run; on a resume records safe changes instead.

  Args:
    workdir: the run's directory.
    config: the resolved config as a JSON-able dict.
    step: the step the run starts from (0 for a fresh run).

  Raises:
    WorkdirError: if the config differs from the workdir's in a field that matters.
  """
  old = read_config(workdir)
  if old is None:
    atomic_write_text(os.path.join(workdir, CONFIG_FILE), json.dumps(config, indent=2, sort_keys=True))
    return
  changes = check_resume_config(old, config)
  if changes:
    with open(os.path.join(workdir, CONFIG_CHANGES_FILE), "a") as f:
      f.write(json.dumps({"step": step, "changes": [
          {"field": k, "old": a, "new": b} for k, a, b in changes]}) + "\n")


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
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _jsonable(value: Any) -> Any:
  value = float(value) if not isinstance(value, (int, str)) else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible as strings.
  return value


class JsonlWriter(interface.MetricWriter):
  """clu MetricWriter appending one JSON object per step to metrics.jsonl.

  Scalars written for the same step (training metrics, then kNN accuracy) are
  merged into one line, written when a later step arrives or on flush. Images,
  videos, audio, texts and histograms belong in TensorBoard and are not written.
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, METRICS_FILE)
    self._step: Optional[int] = None
    self._row: Dict[str, Any] = {}

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    step = int(step)
    if self._step is not None and step != self._step:
      self.flush()
    self._step = step
    self._row.update({k: _jsonable(v) for k, v in scalars.items()})

  def flush(self):
    if self._step is None:
      return
    with open(self._path, "a") as f:
      f.write(json.dumps({"step": self._step, **self._row}) + "\n")
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
  """TensorBoard + console + metrics.jsonl on the main process, console elsewhere.

  Args:
    workdir: the run's directory.
    is_main_process: jax.process_index() == 0.

  Returns:
    A clu MetricWriter.
  """
  if not is_main_process:
    return metric_writers.create_default_writer(just_logging=True, asynchronous=False)
  default = metric_writers.create_default_writer(workdir, asynchronous=False)
  return metric_writers.MultiWriter([default, JsonlWriter(workdir)])
