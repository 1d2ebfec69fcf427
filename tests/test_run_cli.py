"""The plumbing of main.py and the tools: user errors in one line, bugs keep their traceback,
library noise dropped."""
import signal
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from mixsiam_jax import errors
from mixsiam_jax.checkpoints import storage
from mixsiam_jax.run import cli, loop, stopping
from tests import entry_points


def test_user_errors_end_in_one_line_and_bugs_keep_their_traceback():
  with pytest.raises(SystemExit) as exit_:
    with cli.one_line_errors():
      raise errors.UserError("batch_size=12 must be divisible by 8 devices.")
  assert exit_.value.code == "error: batch_size=12 must be divisible by 8 devices."
  with pytest.raises(ValueError, match="a bug"):  # e.g. JAX's own ValueError: not a user error
    with cli.one_line_errors():
      raise ValueError("a bug")


def parse(monkeypatch, *args):
  argv = ["main.py", *args]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
  with pytest.raises(SystemExit) as exit_:
    cli.parse_flags(argv, flag_values)
  return exit_.value.code


def test_config_mistakes_are_one_line(monkeypatch):
  assert parse(monkeypatch, "--config=configs/cifar10.py:tiny", "--config.modle.depth=18") == (
      "error: --config.modle.depth=18: configs/cifar10.py:tiny has no field 'modle'. "
      'Did you mean "model" instead of "modle"?')
  assert parse(monkeypatch, "--config=configs/cifar10.py:tiny", "--config.model.depthx=4") == (
      "error: --config.model.depthx=4: configs/cifar10.py:tiny has no field 'depthx'. "
      'Did you mean "depth" instead of "depthx"?')
  assert parse(monkeypatch, "--config=configs/cifar10.py:tiny", "--config.data.prefetch=3") == (
      "error: --config.data.prefetch=3: configs/cifar10.py:tiny has no field 'prefetch'. "
      "It was renamed: use --config.data.device_prefetch.")
  assert parse(monkeypatch, "--config=configs/nosuch.py") == (
      "error: --config=configs/nosuch.py could not be loaded: "
      "[Errno 2] No such file or directory: 'configs/nosuch.py'")
  assert parse(monkeypatch, "--config=configs/cifar10.py:huge") == (
      "error: flag --config=configs/cifar10.py:huge: ValueError: Unknown variant 'huge' of "
      "configs/cifar10.py; use '' or 'tiny'.")


def _raise(error):
  def program():
    raise error
  return program


@pytest.mark.parametrize("program,status,last_line", [
    (lambda: None, 0, None),
    (_raise(stopping.Stopped(7, signal.SIGTERM)), 75,
     "preempted (SIGTERM) at step 7, checkpoint saved; rerun the same command to resume."),
    (_raise(stopping.Stopped(7, signal.SIGINT)), 130,
     "interrupted (Ctrl-C) at step 7, checkpoint saved; rerun the same command to resume."),
    (_raise(errors.UserError("batch_size=12 must be divisible by 8.")), 1,
     "error: batch_size=12 must be divisible by 8."),
    (_raise(loop.TrainingError("non-finite loss at step 3.")), 3,
     "error: non-finite loss at step 3."),
    (_raise(storage.CheckpointSaveError("cannot save checkpoint 4 in /w: no space.")), 4,
     "error: cannot save checkpoint 4 in /w: no space."),
    (_raise(SystemExit("error: --config.x: no such field")), 1,
     "error: --config.x: no such field"),
    (_raise(KeyError("a bug")), 70,
     "error: unexpected KeyError (a bug; the traceback is above). The newest checkpoint is "
     "intact: rerun the same command to resume."),
])
def test_every_way_out_of_a_program_has_its_exit_status_and_one_line(capsys, program, status,
                                                                     last_line):
  assert cli.run_program(program) == status
  err = capsys.readouterr().err
  if last_line is None:
    assert err == ""
  else:
    assert err.splitlines()[-1] == last_line
    assert ("Traceback" in err) == (status == 70)


def test_a_tools_bug_and_ctrl_c_lines_do_not_speak_of_checkpoints(capsys):
  assert cli.run_program(_raise(KeyError("a bug")), resumable=False) == cli.EXIT_BUG
  err = capsys.readouterr().err
  assert "Traceback" in err
  assert err.splitlines()[-1] == "error: unexpected KeyError (a bug; the traceback is above)."
  assert cli.run_program(_raise(KeyboardInterrupt()), resumable=False) == cli.EXIT_INTERRUPTED
  assert capsys.readouterr().err == "interrupted (Ctrl-C).\n"


def test_a_program_that_returns_a_status_exits_with_it():
  assert cli.run_program(lambda: 2) == 2
  assert cli.run_program(lambda: "grid.png") == cli.EXIT_FINISHED  # not a status
  assert cli.run_program(lambda: True) == cli.EXIT_FINISHED


def test_a_childs_failure_is_named_by_its_last_error_line():
  log = ("I1206 main.py:68] JAX process 0 of 1\nerror: Split '[4500:]' selects no image.\n"
         "W1206 something logged after it\n\n")
  assert cli.last_error_line(log) == "error: Split '[4500:]' selects no image."
  assert cli.last_error_line("Killed\n  \n") == "Killed"
  assert cli.last_error_line("") == "(no output)"


# A tool as run_tool runs it: TensorFlow (if asked for) and JAX start quietly, then the program.
# Importing sharding loads the parts of JAX that, where libtpu is installed, make the backends'
# start search for a TPU and say so (jax alone does not).
TOOL = """
import sys
from mixsiam_jax import errors, sharding
from mixsiam_jax.run import cli
def program():
  import jax
  assert jax.devices()
  print("tensorflow" in sys.modules, flush=True)
  raise errors.UserError("--out=x.png: no such folder.")
cli.run_tool(program, tensorflow={tensorflow}, jax_backend=True)
"""


@pytest.mark.parametrize("tensorflow", [True, False])
def test_a_tool_starts_quietly_and_ends_a_user_error_in_one_line(tensorflow):
  result = entry_points.run("-c", TOOL.format(tensorflow=tensorflow))
  assert entry_points.one_error_line(result) == "error: --out=x.png: no such folder."
  assert result.returncode == 1
  assert result.stdout == f"{tensorflow}\n"  # TensorFlow only where the tool asks for it


def test_tools_that_read_no_data_do_not_load_tensorflow(tmp_path):
  # Each tool's entry point on a bad input, in one process; then: was TensorFlow loaded?
  code = f"""
import runpy, sys
for argv in (["plot", "{tmp_path}/none"],
             ["weights", "export", "--workdir={tmp_path}", "--out={tmp_path}/w.npz"],
             ["planning", "--config=configs/cifar10.py:tiny", "--topology=v9:2x2"]):
  sys.argv = argv
  try:
    runpy.run_module("mixsiam_jax." + argv[0], run_name="__main__", alter_sys=True)
  except SystemExit as e:
    print(argv[0], e.code)
print("tensorflow" in sys.modules)
"""
  result = entry_points.run("-c", code)
  assert result.stdout.split() == ["plot", "1", "weights", "1", "planning", "1", "False"], (
      result.stdout, result.stderr[-3000:])
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), result.stderr
