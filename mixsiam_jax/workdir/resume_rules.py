"""What a rerun in a used workdir may change and must find: the rules of run_files.check_resume.

The rules work on flattened configs ({'dotted.name': value}, see
run_files.flatten_config) and give a refusal as its one-line message, which
run_files.py raises as a WorkdirError; this module reads and writes no files.
"""
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

# Refused differences listed in one message; config.json holds the rest.
MAX_LISTED_DIFFERENCES = 8

# Fields that may change when a run is resumed: they do not change what is trained.
SAFE_TO_CHANGE = (
    "log_every_steps", "checkpoint_every_steps", "eval_every_steps", "eval_dataset",
    "eval_split", "eval_batch_size", "knn", "keep_checkpoints", "keep_checkpoints_every_steps",
    "profile_steps", "data.device_prefetch", "data.skip_bad_images",
    "async_checkpointing", "model.remat", "model.conv_impl", "allow_length_change",
)
# Fields that configs no longer have and that changed nothing trained, with the field
# that replaced each: a workdir whose config.json records them still resumes, and a
# command line that sets one is told the new name.
FORMER_FIELDS = {
    "data.prefetch": "data.device_prefetch",
}
# Fields added to the configs after runs were recorded without them: the value that does
# what those runs did (they resized the crops on the host, where the canvas has no role;
# ANY: not compared when the recorded config lacks it).
ANY = object()
ADDED_FIELDS = {"data.resize_on_device": False, "data.canvas_size": ANY}
# The run's length: changing it on a resume recomputes the lr schedule, so it is
# refused unless the new config sets ALLOW_LENGTH_CHANGE.
LENGTH_FIELDS = ("num_train_steps", "num_epochs")
ALLOW_LENGTH_CHANGE = "allow_length_change"

Difference = Tuple[str, Any, Any]


class _Absent:
  """The value of a field that one of two configs does not have (see config_differences)."""

  def __repr__(self):
    return "absent"


ABSENT = _Absent()

# How messages name the programs of configs/*.py (config.program).
_PROGRAMS = {"pretrain": "pretraining", "knn": "kNN", "linear_probe": "linear-probe"}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[Difference]:
  """Lists (field, old value, new value) for every field that differs.

  A field that one config lacks has the value ABSENT there (one of ADDED_FIELDS
  that ``old`` lacks: its value there); a field absent on one side and None on the
  other does not differ (an unset optional field).

  Args:
    old: a flattened config.
    new: another flattened config.

  Returns:
    The differences, sorted by field name.
  """
  diffs = []
  for key in sorted(set(old) | set(new)):
    va, vb = old.get(key, ADDED_FIELDS.get(key, ABSENT)), new.get(key, ABSENT)
    if va is ANY:
      continue
    if va != vb and not (va is ABSENT and vb is None or vb is ABSENT and va is None):
      diffs.append((key, va, vb))
  return diffs


def _is_safe(field: str) -> bool:
  return any(field == s or field.startswith(s + ".") for s in SAFE_TO_CHANGE + tuple(FORMER_FIELDS))


def _program(config: Mapping[str, Any]) -> str:
  return str(config.get("program", "pretrain"))  # main.py's default: pretraining configs


def _other_program(old: str, new: str, where: str) -> str:
  """The refusal of a workdir of another program: the one difference that matters."""
  name = lambda p: _PROGRAMS.get(p, repr(p))
  fix = f"give the {name(new)} program its own --workdir"
  if old == "pretrain" and new in ("knn", "linear_probe"):
    fix += (" (it reads the pretraining run through --config.pretrained=" +
            (where.partition("=")[2] or "PRETRAINING_WORKDIR") + ")")
  return f"{where} holds a {name(old)} run, not a {name(new)} run: {fix}."


def compare_configs(old: Mapping[str, Any], new: Mapping[str, Any], *, workdir: str,
                    saved: str) -> Tuple[List[Difference], Optional[str]]:
  """Splits the differences of a resume's config into the allowed ones and a refusal.

  A change of the run's length (LENGTH_FIELDS) is allowed when ``new`` sets
  ``allow_length_change``: the program then recomputes its lr schedule for the
  new length.

  Args:
    old: the workdir's config, flattened.
    new: this run's config, flattened.
    workdir: the workdir, named in the message ('' for none).
    saved: the path of the workdir's config.json, named in the message.

  Returns:
    (the allowed differences (logging, evaluation, an allowed run length), the
    one-line refusal or None): the refusal names the other program whose run
    the workdir holds, or the first MAX_LISTED_DIFFERENCES refused differences
    and the way out.
  """
  where = f"--workdir={workdir}" if workdir else "this workdir"
  if _program(old) != _program(new):
    return [], _other_program(_program(old), _program(new), where)
  allow_length = new.get(ALLOW_LENGTH_CHANGE) is True
  diffs = config_differences(old, new)
  allowed = [d for d in diffs if _is_safe(d[0]) or (allow_length and d[0] in LENGTH_FIELDS)]
  refused = [d for d in diffs if d not in allowed]
  if not refused:
    return allowed, None
  listed = "; ".join(f"{k}: {a!r} in the workdir, {b!r} now"
                     for k, a, b in refused[:MAX_LISTED_DIFFERENCES])
  if len(refused) > MAX_LISTED_DIFFERENCES:
    listed += f"; and {len(refused) - MAX_LISTED_DIFFERENCES} more, see {saved}"
  hint = ""
  if any(k in LENGTH_FIELDS for k, _, _ in refused):
    hint = (f" To change the run's length on purpose (e.g. extend a finished run), add "
            f"--config.{ALLOW_LENGTH_CHANGE}=true: the cosine lr schedule is then recomputed "
            "for the new length, so the steps after the resume differ from a run started "
            "with that length.")
  return allowed, (
      f"{where} holds a run with a different configuration ({listed}); resuming would mix "
      f"two experiments. Use a new --workdir, or rerun with the workdir's settings (see "
      f"{saved}).{hint}")


def change_record(step: int, changes: List[Difference]) -> Dict[str, Any]:
  """The config_changes.jsonl record of a resume's allowed changes (an ABSENT value is left out).

  Args:
    step: the step the resumed run starts from.
    changes: the allowed differences (compare_configs).

  Returns:
    A JSON-able dict.
  """
  return {"step": step, "changes": [
      {"field": k, **({} if a is ABSENT else {"old": a}), **({} if b is ABSENT else {"new": b})}
      for k, a, b in changes]}


def length_changes(changes: List[Difference]) -> List[Difference]:
  """The changes that set the run's length (LENGTH_FIELDS): config.json takes them over."""
  return [(k, a, b) for k, a, b in changes if k in LENGTH_FIELDS and b is not ABSENT]


def _positive(value: Any) -> int:
  return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def first_checkpoint(old: Mapping[str, Any], new: Mapping[str, Any]) -> Tuple[int, int]:
  """When a run of either config has surely committed a checkpoint.

  A run that logged step s has committed the checkpoint at step
  checkpoint_every_steps once s is past it; with asynchronous checkpointing only
  once s is past the next save too (a save waits for the previous one, and a
  step's metrics are written before its own save starts). The larger interval
  of the two configs and either's asynchrony are assumed, so a run killed before
  its first checkpoint is never taken for one that lost its checkpoints.

  Args:
    old: the workdir's config.
    new: this run's config.

  Returns:
    (the step of the first checkpoint, the last step a run may have logged
    before that checkpoint is committed); (0, 0) when neither config writes
    checkpoints (kNN).
  """
  every = max(_positive(old.get("checkpoint_every_steps")),
              _positive(new.get("checkpoint_every_steps")))
  asynchronous = old.get("async_checkpointing") or new.get("async_checkpointing")
  return every, every * (2 if asynchronous else 1)


def newest_step(rows: Iterable[Mapping[str, Any]]) -> int:
  """The newest step that metric rows (metrics_file.read_metrics) log; 0 if none."""
  return max((r["step"] for r in rows if _positive(r.get("step"))), default=0)
