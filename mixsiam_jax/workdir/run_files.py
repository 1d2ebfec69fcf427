"""The workdir: its checks before a (re)start and the resolved config of its run.

A workdir holds checkpoints/ (Orbax), TensorBoard event files, metrics.jsonl
(one JSON object per logged step) and config.json (the resolved config of the
run). Rerunning in the same workdir resumes; config changes that would make the
resumed run a different experiment are refused, and so is a workdir that has lost
its config.json or its checkpoints (a resume could not be told from a new run).

A program uses this module in two phases, so that a run refused for bad input
leaves nothing behind that would refuse the corrected rerun:
  1. checks, which create and write nothing: check_workdir, check_resume;
  2. once every check has passed (data sets, options, checkpoint): start_run,
     which creates the workdir, writes config.json (or records the safe changes
     of a resume) and drops metric lines the resumed run logs again.
"""
import errno
import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional

from absl import logging

from mixsiam_jax.errors import WorkdirError
from mixsiam_jax.workdir import metrics_file, paths, resume_rules

CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
# The checkpoints' folder in a workdir (storage.py imports it: this module stays free
# of Orbax and JAX, as main.py imports it before the flags are parsed).
CHECKPOINT_DIR = "checkpoints"


def check_workdir(workdir: str) -> str:
  """Checks that ``workdir`` can be used, without creating or writing anything.

  Args:
    workdir: path of the run's directory (it need not exist yet).

  Returns:
    The absolute path.

  Raises:
    WorkdirError: the path is empty, a file, too long, or cannot be written (or created).
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
  if paths.too_long(path, existing):
    raise WorkdirError(paths.creation_message(
        workdir, path, OSError(errno.ENAMETOOLONG, "File name too long")))
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
  created = create_directories(path, workdir)
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
      pass
  except OSError as e:
    paths.remove(created)
    raise WorkdirError(f"--workdir={workdir} is not writable ({e.strerror}); "
                       "choose a directory you can write to.") from None
  return path


def create_directories(path: str, workdir: str) -> List[str]:
  """Creates ``path`` and its missing parents; on failure removes those it created.

  Args:
    path: the absolute directory to create (from check_workdir).
    workdir: the --workdir value as given, for the message.

  Returns:
    The directories created, outermost first ([] if ``path`` existed).

  Raises:
    WorkdirError: one line naming the flag and the reason (for a path longer than
      the file system allows, that it is too long); nothing created is left behind.
  """
  try:
    return paths.create(path)
  except OSError as e:
    raise WorkdirError(paths.creation_message(workdir, path, e)) from None


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


def check_resume_config(old: Mapping[str, Any], new: Mapping[str, Any], *,
                        workdir: str = "") -> List[resume_rules.Difference]:
  """Refuses a resume whose config changes what is trained (see resume_rules.compare_configs).

  Args:
    old: the config.json already in the workdir.
    new: the config of this run (as a dict).
    workdir: the workdir, named in the message.

  Returns:
    The allowed differences (logging, evaluation, an allowed run length), to be recorded.

  Raises:
    WorkdirError: one line: that the workdir holds another program's run, or the
      first refused differences and the way out.
  """
  saved = os.path.join(workdir, CONFIG_FILE) if workdir else CONFIG_FILE
  allowed, refusal = resume_rules.compare_configs(flatten_config(old), flatten_config(new),
                                                  workdir=workdir, saved=saved)
  if refusal:
    raise WorkdirError(refusal)
  return allowed


def checkpoint_steps(workdir: str) -> List[int]:
  """The step directories in ``workdir``/checkpoints, by name and unread (see storage.py)."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  try:
    names = os.listdir(directory)
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _check_no_lost_checkpoints(workdir: str, old: Mapping[str, Any],
                               new: Mapping[str, Any]) -> None:
  """Refuses a workdir whose metrics prove that a checkpoint was written, when none is left."""
  every, written_by = resume_rules.first_checkpoint(old, new)
  if not every:
    return  # a program without checkpoints (kNN)
  newest = resume_rules.newest_step(metrics_file.read_metrics(workdir))
  if newest > written_by:
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    raise WorkdirError(
        f"--workdir={workdir} has metrics up to step {newest} ({metrics_file.METRICS_FILE}) but no "
        f"checkpoint in {directory}, though one was written at step {every}: the checkpoints "
        "were deleted or moved. Put them back to resume, or start over in a new --workdir.")


def _lost_record_error(workdir: str, steps: List[int], name: str, unknown: str,
                       other_fixes: str = "start over in a new --workdir") -> WorkdirError:
  """The refusal of a workdir whose checkpoints outlived one of the run's record files.

  Args:
    workdir: the workdir.
    steps: its checkpoint steps.
    name: the lost file, e.g. 'config.json'.
    unknown: what the file told, e.g. 'the settings they were trained with'.
    other_fixes: the ways out besides putting the file back.

  Returns:
    The WorkdirError (one line) naming the file and the fixes.
  """
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  return WorkdirError(
      f"--workdir={workdir} holds checkpoints (steps {steps} in {directory}) but no {name}, "
      f"so {unknown} are unknown and a resume could change them unnoticed. Put the run's "
      f"{name} back to resume, or {other_fixes}.")


def check_record_kept(workdir: str, name: str, unknown: str) -> None:
  """Refuses a workdir that holds checkpoints but not the record file ``name``.

  For a program's own record files (pretraining's data.json): a resume could not
  check what the file recorded, as for config.json (check_resume). Moving the
  checkpoints away is no way out here: config.json and metrics.jsonl would still
  prove that they existed, so the fixes are the file or a new --workdir.

  Args:
    workdir: the workdir (from check_workdir).
    name: the file's name in the workdir.
    unknown: what the file records, e.g. 'the data sets they were trained on'.

  Raises:
    WorkdirError: one line naming the file and the fixes.
  """
  steps = checkpoint_steps(workdir)
  if steps and not os.path.exists(os.path.join(workdir, name)):
    raise _lost_record_error(workdir, steps, name, unknown)


def check_resume(workdir: str, config: Mapping[str, Any]) -> List[resume_rules.Difference]:
  """Checks ``config`` against the run already in ``workdir``; creates and writes nothing.

  Beyond the config (check_resume_config), the workdir must be whole: checkpoints
  without config.json (their settings unknown) are refused, and so is config.json
  with metrics proving that checkpoints existed when none is left.

  Args:
    workdir: the run's directory (from check_workdir; it need not exist yet).
    config: the resolved config of this run as a JSON-able dict.

  Returns:
    The allowed differences ([] for a new run).

  Raises:
    WorkdirError: one line: the workdir holds another program's run or a
      different experiment, has lost its config.json or its checkpoints, or has an
      unreadable config.json or metrics.jsonl.
  """
  old = read_config(workdir)
  steps = checkpoint_steps(workdir)
  if old is None:
    if steps:
      directory = os.path.join(workdir, CHECKPOINT_DIR)
      # Without config.json the workdir is a new run once its checkpoints are moved away.
      raise _lost_record_error(
          workdir, steps, CONFIG_FILE, "the settings they were trained with",
          f"move the checkpoints away (mv {directory} {directory}_without_config) to start "
          "over, or use a new --workdir")
    return []
  allowed = check_resume_config(old, config, workdir=workdir)
  if not steps:
    _check_no_lost_checkpoints(workdir, old, config)
  return allowed


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
    paths.atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True))
    return
  changes = check_resume_config(old, config, workdir=workdir)
  if not changes:
    return
  with open(os.path.join(workdir, CONFIG_CHANGES_FILE), "a") as f:
    f.write(json.dumps(resume_rules.change_record(step, changes)) + "\n")
  lengths = resume_rules.length_changes(changes)
  if lengths:
    paths.atomic_write_text(path, json.dumps({**old, **{k: b for k, _, b in lengths}},
                                             indent=2, sort_keys=True))
    logging.warning(
        "Run length changed at step %d (%s), allowed by %s: the lr schedule is recomputed "
        "for the new length, so the steps from here on differ from a run started with it.",
        step, ", ".join(f"{k} {a} -> {b}" for k, a, b in lengths),
        resume_rules.ALLOW_LENGTH_CHANGE)


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
    WorkdirError: the workdir cannot be written, holds a different experiment, or
      is not whole (see check_resume).
  """
  check_resume(check_workdir(workdir), config)  # for callers that skipped it
  path = prepare_workdir(workdir)
  save_config(path, config, step)
  metrics_file.truncate_metrics(path, step)
  return path
