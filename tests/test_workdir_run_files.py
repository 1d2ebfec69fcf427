"""The workdir's checks, config.json, and the two phases (check, then start the run)."""
import json
import shutil

import pytest

from configs import cifar10
from mixsiam_jax import errors
from mixsiam_jax.options.programs import from_config
from mixsiam_jax.workdir import metrics_file, resume_rules, run_files
from tests.helpers import override, snapshot


def config_dict(**overrides):
  config = cifar10.get_config("tiny")
  config.dataset = "folder:/nonexistent"
  config.eval_dataset = ""
  override(config, overrides)
  return json.loads(config.to_json_best_effort())


def test_every_safe_field_is_a_config_field_and_former_fields_are_not():
  flat = run_files.flatten_config(config_dict())
  for field in resume_rules.SAFE_TO_CHANGE + resume_rules.LENGTH_FIELDS:
    assert any(k == field or k.startswith(field + ".") for k in flat), field
  for field in resume_rules.FORMER_FIELDS:
    assert field not in flat, field


def test_a_run_recorded_with_a_former_field_resumes():
  """A workdir started when data.device_prefetch was data.prefetch resumes under the new name."""
  old = config_dict()
  old["data"]["prefetch"] = old["data"].pop("device_prefetch")
  differences = run_files.check_resume_config(old, config_dict())
  assert sorted(d[0] for d in differences) == ["data.device_prefetch", "data.prefetch"]


def test_a_run_recorded_before_resize_on_device_resumes_only_on_the_host_path():
  """Its config.json lacks data.resize_on_device and data.canvas_size: it resized on the host."""
  old = config_dict()
  del old["data"]["resize_on_device"], old["data"]["canvas_size"]
  host = {"data.resize_on_device": False, "data.canvas_size": 64}
  assert run_files.check_resume_config(old, config_dict(**host)) == []
  with pytest.raises(run_files.WorkdirError, match="data.resize_on_device: False in the "
                     "workdir, True now"):
    run_files.check_resume_config(old, config_dict())  # the recipe's default now


def test_workdir_errors_are_user_errors():
  assert issubclass(run_files.WorkdirError, errors.UserError)


def test_checks_create_and_write_nothing(tmp_path):
  workdir = tmp_path / "new" / "run"
  path = run_files.check_workdir(str(workdir))
  assert path == str(workdir)
  assert run_files.check_resume(path, config_dict()) == []
  assert not (tmp_path / "new").exists()
  # The run starts: only now the workdir and config.json appear.
  assert run_files.start_run(str(workdir), config_dict(), step=0) == path
  assert json.loads((workdir / "config.json").read_text()) == config_dict()


def test_unusable_workdirs_are_refused(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(run_files.WorkdirError, match="--workdir is required"):
    run_files.check_workdir("")
  for check in (run_files.check_workdir, run_files.prepare_workdir):
    with pytest.raises(run_files.WorkdirError, match="a_file is a file"):
      check(str(blocker))
    with pytest.raises(run_files.WorkdirError, match="is not writable"):
      check(str(blocker / "sub"))


def test_incompatible_config_is_refused_in_one_line(tmp_path):
  run_files.start_run(str(tmp_path), config_dict(), step=0)
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  changed = config_dict(**{"model.width": 16, "method.aggregation": "mean",
                           "log_every_steps": 1})  # the last one is safe on its own
  with pytest.raises(run_files.WorkdirError) as err:
    run_files.check_resume(str(tmp_path), changed)
  message = str(err.value)
  assert "\n" not in message
  assert "model.width: 8 in the workdir, 16 now" in message
  assert "method.aggregation: 'max' in the workdir, 'mean' now" in message
  assert "log_every_steps" not in message and "allow_length_change" not in message
  with pytest.raises(run_files.WorkdirError):
    run_files.start_run(str(tmp_path), changed, step=1)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_safe_changes_are_recorded(tmp_path):
  run_files.start_run(str(tmp_path), config_dict(), step=0)
  run_files.start_run(str(tmp_path), config_dict(log_every_steps=7), step=3)
  record = json.loads((tmp_path / "config_changes.jsonl").read_text())
  assert record == {"step": 3, "changes": [{"field": "log_every_steps", "old": 2, "new": 7}]}
  assert json.loads((tmp_path / "config.json").read_text())["log_every_steps"] == 2


def test_a_longer_run_is_refused_unless_allowed(tmp_path):
  run_files.start_run(str(tmp_path), config_dict(), step=0)
  with pytest.raises(run_files.WorkdirError) as err:
    run_files.check_resume(str(tmp_path), config_dict(num_train_steps=9))
  message = str(err.value)
  assert "num_train_steps: 6 in the workdir, 9 now" in message
  assert "--config.allow_length_change=true" in message and "lr schedule" in message

  longer = config_dict(num_train_steps=9, allow_length_change=True)
  assert run_files.check_resume(str(tmp_path), longer) == [
      ("allow_length_change", False, True), ("num_train_steps", 6, 9)]
  run_files.start_run(str(tmp_path), longer, step=6)
  record = json.loads((tmp_path / "config_changes.jsonl").read_text())
  assert {"field": "num_train_steps", "old": 6, "new": 9} in record["changes"]
  # config.json now holds the new length: a later resume compares against it.
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 9
  assert run_files.check_resume(str(tmp_path), config_dict(num_train_steps=9)) == []
  # The permission covers the length only.
  with pytest.raises(run_files.WorkdirError, match="model.depth"):
    run_files.check_resume(str(tmp_path), config_dict(
        num_train_steps=9, allow_length_change=True, **{"model.depth": 34}))


def test_start_run_drops_metrics_the_resume_logs_again(tmp_path):
  run_files.start_run(str(tmp_path), config_dict(), step=0)
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)))
  run_files.start_run(str(tmp_path), config_dict(), step=4)
  assert [r["step"] for r in metrics_file.read_metrics(str(tmp_path))] == [2, 4]


def test_checkpoints_without_config_json_are_refused_and_nothing_is_written(tmp_path):
  (tmp_path / "checkpoints" / "9").mkdir(parents=True)
  (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()  # not a step
  with pytest.raises(run_files.WorkdirError) as err:
    run_files.check_resume(str(tmp_path), config_dict(**{"optim.base_lr": 0.5}))
  message = str(err.value)
  assert "\n" not in message
  assert f"--workdir={tmp_path} holds checkpoints (steps [9] in {tmp_path}/checkpoints) but no " \
         "config.json" in message
  assert f"mv {tmp_path}/checkpoints {tmp_path}/checkpoints_without_config" in message
  with pytest.raises(run_files.WorkdirError, match="but no config.json"):
    run_files.start_run(str(tmp_path), config_dict(), step=0)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
  # An empty checkpoints/ (a run killed before its first save) is a new run.
  empty = tmp_path / "empty"
  (empty / "checkpoints").mkdir(parents=True)
  assert run_files.check_resume(str(empty), config_dict()) == []


def test_checkpoints_without_a_program_s_record_file_are_refused_naming_it(tmp_path):
  run_files.check_record_kept(str(tmp_path), "data.json", "the data sets")  # a new run
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  with pytest.raises(run_files.WorkdirError) as err:
    run_files.check_record_kept(str(tmp_path), "data.json", "the data sets they were trained on")
  assert str(err.value) == (
      f"--workdir={tmp_path} holds checkpoints (steps [3] in {tmp_path}/checkpoints) but no "
      "data.json, so the data sets they were trained on are unknown and a resume could change "
      "them unnoticed. Put the run's data.json back to resume, or start over in a new --workdir.")
  (tmp_path / "data.json").write_text("{}")
  run_files.check_record_kept(str(tmp_path), "data.json", "the data sets")


@pytest.mark.parametrize("async_checkpointing,last_kept,first_refused", [
    (False, 3, 4),  # the tiny config saves every 3 steps; step 4 is logged after save 3 returned
    (True, 6, 7),   # asynchronous: step 7 is logged after save 6 waited for save 3
])
def test_lost_checkpoints_are_refused_but_a_run_killed_before_its_first_is_not(
    tmp_path, async_checkpointing, last_kept, first_refused):
  config = config_dict(async_checkpointing=async_checkpointing)
  run_files.start_run(str(tmp_path), config, step=0)
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                             for s in range(1, last_kept + 1)))
  assert run_files.check_resume(str(tmp_path), config) == []
  run_files.start_run(str(tmp_path), config, step=0)  # restarts from step 0 ...
  assert metrics_file.read_metrics(str(tmp_path)) == []  # ... and logs those steps again
  metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                             for s in range(1, first_refused + 1)))
  with pytest.raises(run_files.WorkdirError) as err:
    run_files.check_resume(str(tmp_path), config)
  assert str(err.value) == (
      f"--workdir={tmp_path} has metrics up to step {first_refused} (metrics.jsonl) but no "
      f"checkpoint in {tmp_path}/checkpoints, though one was written at step 3: the "
      "checkpoints were deleted or moved. Put them back to resume, or start over in a new "
      "--workdir.")
  with pytest.raises(run_files.WorkdirError, match="checkpoints were deleted or moved"):
    run_files.start_run(str(tmp_path), config, step=0)
  assert len(metrics_file.read_metrics(str(tmp_path))) == first_refused  # nothing dropped


def test_another_programs_workdir_is_named_first_and_alone(tmp_path):
  from configs import knn  # pylint: disable=g-import-not-at-top
  run_files.start_run(str(tmp_path), config_dict(), step=0)
  knn_config = knn.get_config()
  knn_config.pretrained = str(tmp_path)
  with pytest.raises(run_files.WorkdirError) as err:
    run_files.check_resume(str(tmp_path), json.loads(knn_config.to_json_best_effort()))
  assert str(err.value) == (
      f"--workdir={tmp_path} holds a pretraining run, not a kNN run: give the kNN program its "
      f"own --workdir (it reads the pretraining run through --config.pretrained={tmp_path}).")


def test_only_real_differences_are_listed_absent_ones_as_absent_and_at_most_eight(tmp_path):
  old = config_dict()
  old["half_precision"] = None
  old["retired_field"] = 3
  new = config_dict()
  del new["half_precision"]  # absent here, None there: the same unset field
  flat = run_files.flatten_config
  assert resume_rules.config_differences(flat(old), flat(new)) == [
      ("retired_field", 3, resume_rules.ABSENT)]
  run_files.start_run(str(tmp_path), old, step=0)
  for i, field in enumerate(("depth", "width", "projector_layers", "projector_dim",
                             "projector_hidden_dim", "predictor_hidden_dim", "stem")):
    new["model"][field] = {"stem": "imagenet", "depth": 34}.get(field, 4 + i)
  new["method"]["lam"] = 0.25
  new["seed"] = 7
  with pytest.raises(run_files.WorkdirError) as err:
    run_files.check_resume(str(tmp_path), new)
  message = str(err.value)
  assert message.startswith(f"--workdir={tmp_path} holds a run with a different configuration "
                            "(method.lam: 0.5 in the workdir, 0.25 now; model.depth: 18 in the "
                            "workdir, 34 now;")
  assert "retired_field: 3 in the workdir, absent now" not in message  # the ninth and tenth
  assert f"; and 2 more, see {tmp_path}/config.json)" in message
  assert "None" not in message and "half_precision" not in message
  assert len(message) < 900


def test_safe_changes_of_absent_fields_are_recorded_without_a_value(tmp_path):
  old = config_dict()
  del old["knn"]
  run_files.start_run(str(tmp_path), old, step=0)
  run_files.start_run(str(tmp_path), config_dict(), step=3)
  record = json.loads((tmp_path / "config_changes.jsonl").read_text())
  assert {"field": "knn.k", "new": 20} in record["changes"]


def test_a_too_long_workdir_is_refused_before_anything_is_created(tmp_path):
  long_path = str(tmp_path / "/".join(["d" * 200] * 30))  # 6,000 characters, as reported
  for check in (run_files.check_workdir, run_files.prepare_workdir):
    with pytest.raises(run_files.WorkdirError) as err:
      check(long_path)
    message = str(err.value)
    assert "is too long for the file system" in message and "choose a shorter path" in message
    assert len(message) < 500
  assert list(tmp_path.iterdir()) == []


def test_a_failed_creation_removes_exactly_what_it_created(tmp_path):
  (tmp_path / "kept").mkdir()
  target = tmp_path / "kept" / "a" / "b" / ("x" * 300) / "c"  # the fourth name is too long
  with pytest.raises(run_files.WorkdirError, match="is too long for the file system"):
    run_files.create_directories(str(target), str(target))
  assert [p.name for p in tmp_path.rglob("*")] == ["kept"]
  assert run_files.create_directories(str(tmp_path / "kept" / "a"), "x") == [
      str(tmp_path / "kept" / "a")]
  assert run_files.create_directories(str(tmp_path / "kept" / "a"), "x") == []


def _tiny_config(folder, **overrides):
  """The config of the tiny_pretrained fixture's run."""
  config = cifar10.get_config("tiny")
  config.dataset = config.eval_dataset = f"folder:{folder}"
  config.async_checkpointing = False
  return override(config, overrides)


@pytest.mark.slow
def test_pretraining_refuses_checkpoints_whose_config_json_is_gone(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(tiny_pretrained, run)
  (run / "config.json").rename(tmp_path / "config.json")
  before = snapshot(run)
  with pytest.raises(run_files.WorkdirError,
                     match=r"holds checkpoints \(steps \[3, 6\] in .*\) but no config.json"):
    pretrain.train_and_evaluate(
        from_config(_tiny_config(cifar_jpeg_folder, **{"optim.base_lr": 0.5})), str(run))
  assert snapshot(run) == before
  (tmp_path / "config.json").rename(run / "config.json")  # put back: the run is whole again
  with pytest.raises(run_files.WorkdirError, match="optim.base_lr: 0.03 in the workdir, 0.5 now"):
    pretrain.train_and_evaluate(
        from_config(_tiny_config(cifar_jpeg_folder, **{"optim.base_lr": 0.5})), str(run))
  assert pretrain.train_and_evaluate(from_config(_tiny_config(cifar_jpeg_folder)),
                                     str(run)) == {}


@pytest.mark.slow
def test_pretraining_refuses_a_workdir_whose_checkpoints_are_gone(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(tiny_pretrained, run)
  shutil.rmtree(run / "checkpoints")
  before = snapshot(run)
  with pytest.raises(run_files.WorkdirError) as err:
    pretrain.train_and_evaluate(from_config(_tiny_config(cifar_jpeg_folder)), str(run))
  assert str(err.value).startswith(f"--workdir={run} has metrics up to step 6 (metrics.jsonl) "
                                   "but no checkpoint")
  assert snapshot(run) == before
