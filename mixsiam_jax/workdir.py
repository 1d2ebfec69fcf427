"""The workdir: its checks, the resolved config, and metrics.jsonl.

A workdir holds checkpoints/ (Orbax), TensorBoard event files, metrics.jsonl
(one JSON object per logged step) and config.json (the resolved config of the
run). Rerunning in the same workdir resumes; config changes that would make the
resumed run a different experiment are refused.

A program uses this module in two phases, so that a run refused for bad input
leaves nothing behind that would refuse the corrected rerun:
  1. checks, which create and write nothing: check_workdir, check_resume;
  2. once every check has passed (data sets, options, checkpoint): start_run,
     which creates the workdir, writes config.json (or records the safe changes
     of a resume) and drops metric lines the resumed run logs again.
"""
import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging

from mixsiam_jax.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_CHANGES_FILE = "config_changes.jsonl"

# Fields that may change when a run is resumed: they do not change what is trained.
SAFE_TO_CHANGE = (
    "log_every_steps", "checkpoint_every_steps", "eval_every_steps", "eval_dataset",
    "eval_split", "eval_batch_size", "knn", "keep_checkpoints", "keep_checkpoints_every_steps",
    "profile_steps", "data.prefetch", "data.skip_bad_images", "async_checkpointing",
    "model.remat", "model.conv_impl", "allow_length_change",
)
# The run's length: changing it on a resume recomputes the lr schedule, so it is
# refused unless the new config sets ALLOW_LENGTH_CHANGE.
LENGTH_FIELDS = ("num_train_steps", "num_epochs")
ALLOW_LENGTH_CHANGE = "allow_length_change"

Difference = Tuple[str, Any, Any]


class WorkdirError(UserError):
  """A workdir that cannot be used as asked."""


def check_workdir(workdir: str) -> str:
  """Checks that ``workdir`` can be used, without creating or writing anything.

  Args:
    workdir: path of the run's directory (it need not exist yet).

  Returns:
    The absolute path.

  Raises:
    WorkdirError: the path is empty, a file, or cannot be written (or created).
  """
  if not workdir:
    raise WorkdirError("--workdir is required: the directory for checkpoints and logs.")
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; choose another path.")
  existing = path
  while not os.path.exists(existing):  # the directory that would hold the new ones
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"--workdir={workdir} is not writable ({existing} is a file); "
                       "choose a directory you can write to.")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir={workdir} is not writable ({existing} does not allow it); "
                       "choose a directory you can write to.")
  return path


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` if needed and checks that it is writable.

  Args:
    workdir: path of the run's directory.

  Returns:
    The absolute path.

  Raises:
    WorkdirError: the path is a file, or not writable.
  """
  path = check_workdir(workdir)
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


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[Difference]:
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


def check_resume_config(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[Difference]:
  """Refuses a resume whose config changes what is trained.

  A change of the run's length (LENGTH_FIELDS) is allowed when ``new`` sets
  ``allow_length_change``: the program then recomputes its lr schedule for the
  new length.

  Args:
    old: the config.json already in the workdir.
    new: the config of this run (as a dict).

  Returns:
    The allowed differences (logging, evaluation, an allowed run length), to be recorded.

  Raises:
    WorkdirError: one line listing every refused difference and the way out.
  """
  allow_length = new.get(ALLOW_LENGTH_CHANGE) is True
  diffs = config_differences(old, new)
  allowed = [d for d in diffs if _is_safe(d[0]) or (allow_length and d[0] in LENGTH_FIELDS)]
  refused = [d for d in diffs if d not in allowed]
  if refused:
    listed = "; ".join(f"{k}: {a!r} in the workdir, {b!r} now" for k, a, b in refused)
    hint = ""
    if any(k in LENGTH_FIELDS for k, _, _ in refused):
      hint = (f" To change the run's length on purpose (e.g. extend a finished run), add "
              f"--config.{ALLOW_LENGTH_CHANGE}=true: the cosine lr schedule is then recomputed "
              "for the new length, so the steps after the resume differ from a run started "
              "with that length.")
    raise WorkdirError(
        "This workdir holds a run with a different configuration; resuming would mix two "
        f"experiments ({listed}). Use a new --workdir, or rerun with the workdir's settings "
        f"(see its config.json).{hint}")
  return allowed


def check_resume(workdir: str, config: Mapping[str, Any]) -> List[Difference]:
  """Checks ``config`` against the run already in ``workdir``; creates and writes nothing.

  Args:
    workdir: the run's directory (from check_workdir; it need not exist yet).
    config: the resolved config of this run as a JSON-able dict.

  Returns:
    The allowed differences ([] for a new run).

  Raises:
    WorkdirError: the workdir holds a different experiment, or an unreadable config.json.
  """
  old = read_config(workdir)
  return [] if old is None else check_resume_config(old, config)


def save_config(workdir: str, config: Mapping[str, Any], step: int) -> None:
  """Writes config.json on the first run; on a resume records the allowed changes instead.

  An allowed change of the run's length is also written into config.json, so
  later resumes compare against the new length.

  Args:
    workdir: the run's directory.
    config: the resolved config as a JSON-able dict.
    step: the step the run starts from (0 for a fresh run).

  Raises:
    WorkdirError: if the config differs from the workdir's in a field that matters.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  old = read_config(workdir)
  if old is None:
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True))
    return
  changes = check_resume_config(old, config)
  if not changes:
    return
  with open(os.path.join(workdir, CONFIG_CHANGES_FILE), "a") as f:
    f.write(json.dumps({"step": step, "changes": [
        {"field": k, "old": a, "new": b} for k, a, b in changes]}) + "\n")
  lengths = [(k, a, b) for k, a, b in changes if k in LENGTH_FIELDS]
  if lengths:
    atomic_write_text(path, json.dumps({**old, **{k: b for k, _, b in lengths}},
                                       indent=2, sort_keys=True))
    logging.warning(
        "Run length changed at step %d (%s), allowed by %s: the lr schedule is recomputed "
        "for the new length, so the steps from here on differ from a run started with it.",
        step, ", ".join(f"{k} {a} -> {b}" for k, a, b in lengths), ALLOW_LENGTH_CHANGE)


def start_run(workdir: str, config: Mapping[str, Any], step: int) -> str:
  """Creates the workdir and records the run: call it once every check has passed.

  Writes config.json (or, on a resume, records the allowed changes) and drops
  the metric lines after ``step``, which the resumed run logs again.

  Args:
    workdir: the run's directory.
    config: the resolved config as a JSON-able dict.
    step: the step the run starts from (0 for a fresh run).

  Returns:
    The absolute path of the workdir.

  Raises:
    WorkdirError: the workdir cannot be written, or holds a different experiment.
  """
  path = prepare_workdir(workdir)
  save_config(path, config, step)
  truncate_metrics(path, step)
  return path


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
