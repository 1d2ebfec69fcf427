"""The workdir's checks, config.json, and the two phases (check, then start the run)."""
import json

import pytest

from configs import cifar10
from mixsiam_jax import errors, workdir as workdir_lib


def config_dict(**overrides):
  config = cifar10.get_config("tiny")
  config.dataset = "folder:/nonexistent"
  config.eval_dataset = ""
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return json.loads(config.to_json_best_effort())


def test_every_safe_field_is_a_config_field():
  flat = workdir_lib.flatten_config(config_dict())
  for field in workdir_lib.SAFE_TO_CHANGE + workdir_lib.LENGTH_FIELDS:
    assert any(k == field or k.startswith(field + ".") for k in flat), field


def test_workdir_errors_are_user_errors():
  assert issubclass(workdir_lib.WorkdirError, errors.UserError)


def test_checks_create_and_write_nothing(tmp_path):
  workdir = tmp_path / "new" / "run"
  path = workdir_lib.check_workdir(str(workdir))
  assert path == str(workdir)
  assert workdir_lib.check_resume(path, config_dict()) == []
  assert not (tmp_path / "new").exists()
  # The run starts: only now the workdir and config.json appear.
  assert workdir_lib.start_run(str(workdir), config_dict(), step=0) == path
  assert json.loads((workdir / "config.json").read_text()) == config_dict()


def test_unusable_workdirs_are_refused(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="--workdir is required"):
    workdir_lib.check_workdir("")
  for check in (workdir_lib.check_workdir, workdir_lib.prepare_workdir):
    with pytest.raises(workdir_lib.WorkdirError, match="a_file is a file"):
      check(str(blocker))
    with pytest.raises(workdir_lib.WorkdirError, match="is not writable"):
      check(str(blocker / "sub"))


def test_incompatible_config_is_refused_in_one_line(tmp_path):
  workdir_lib.start_run(str(tmp_path), config_dict(), step=0)
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  changed = config_dict(**{"model.width": 16, "method.aggregation": "mean",
                           "log_every_steps": 1})  # the last one is safe on its own
  with pytest.raises(workdir_lib.WorkdirError) as err:
    workdir_lib.check_resume(str(tmp_path), changed)
  message = str(err.value)
  assert "\n" not in message
  assert "model.width: 8 in the workdir, 16 now" in message
  assert "method.aggregation: 'max' in the workdir, 'mean' now" in message
  assert "log_every_steps" not in message and "allow_length_change" not in message
  with pytest.raises(workdir_lib.WorkdirError):
    workdir_lib.start_run(str(tmp_path), changed, step=1)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_safe_changes_are_recorded(tmp_path):
  workdir_lib.start_run(str(tmp_path), config_dict(), step=0)
  workdir_lib.start_run(str(tmp_path), config_dict(log_every_steps=7), step=3)
  record = json.loads((tmp_path / "config_changes.jsonl").read_text())
  assert record == {"step": 3, "changes": [{"field": "log_every_steps", "old": 2, "new": 7}]}
  assert json.loads((tmp_path / "config.json").read_text())["log_every_steps"] == 2


def test_a_longer_run_is_refused_unless_allowed(tmp_path):
  workdir_lib.start_run(str(tmp_path), config_dict(), step=0)
  with pytest.raises(workdir_lib.WorkdirError) as err:
    workdir_lib.check_resume(str(tmp_path), config_dict(num_train_steps=9))
  message = str(err.value)
  assert "num_train_steps: 6 in the workdir, 9 now" in message
  assert "--config.allow_length_change=true" in message and "lr schedule" in message

  longer = config_dict(num_train_steps=9, allow_length_change=True)
  assert workdir_lib.check_resume(str(tmp_path), longer) == [
      ("allow_length_change", False, True), ("num_train_steps", 6, 9)]
  workdir_lib.start_run(str(tmp_path), longer, step=6)
  record = json.loads((tmp_path / "config_changes.jsonl").read_text())
  assert {"field": "num_train_steps", "old": 6, "new": 9} in record["changes"]
  # config.json now holds the new length: a later resume compares against it.
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 9
  assert workdir_lib.check_resume(str(tmp_path), config_dict(num_train_steps=9)) == []
  # The permission covers the length only.
  with pytest.raises(workdir_lib.WorkdirError, match="model.depth"):
    workdir_lib.check_resume(str(tmp_path), config_dict(
        num_train_steps=9, allow_length_change=True, **{"model.depth": 34}))


def test_start_run_drops_metrics_the_resume_logs_again(tmp_path):
  workdir_lib.start_run(str(tmp_path), config_dict(), step=0)
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)))
  workdir_lib.start_run(str(tmp_path), config_dict(), step=4)
  assert [r["step"] for r in workdir_lib.read_metrics(str(tmp_path))] == [2, 4]
