"""The shared loop: durations, bounded steps in flight, stop on SIGTERM, logging, checkpoints."""
import os
import signal
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mixsiam_jax.checkpoints import storage
from mixsiam_jax.checkpoints.run_checkpoints import Checkpoints
from mixsiam_jax.errors import UserError
from mixsiam_jax.options.shared import Cadence, CheckpointOptions
from mixsiam_jax.run import loop, metric_writer, progress, stopping
from tests.helpers import progress_recorder


class Pending(float):
  """A metric value of a step that 'finishes' only when the loop waits for it."""

  def __new__(cls, value, step, log):
    obj = super().__new__(cls, value)
    obj.step, obj.log = step, log
    return obj

  def block_until_ready(self):
    self.log["finished"].add(self.step)
    return self


class FakeProgram:
  """A step whose completion the test observes; optionally SIGTERMs itself at one step."""

  def __init__(self, sigterm_at=None, loss_at=None, seconds_at=None):
    self.log = {"finished": set(), "finished_when_dispatched": {}}
    self.sigterm_at = sigterm_at
    self.loss_at = loss_at or {}
    self.seconds_at = seconds_at or {}

  def step(self, state, batch):
    step = state["step"] + 1
    time.sleep(self.seconds_at.get(step, 0.0))
    self.log["finished_when_dispatched"][step] = set(self.log["finished"])
    if step == self.sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    loss = self.loss_at.get(step, -0.5)
    return {"step": step, "w": state["w"] + batch}, {"loss": Pending(loss, step, self.log)}


class ListWriter:
  """Collects write_scalars calls."""

  def __init__(self):
    self.rows, self.closed = [], False
    self.flushed_through = 0  # the newest step written when last flushed

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))

  def flush(self):
    self.flushed_through = max([step for step, _ in self.rows], default=0)

  def close(self):
    self.closed = True


def fake_checkpoints(tmp_path):
  """Synchronous checkpoints of the fake state's 'w' in tmp_path/ckpt."""
  return Checkpoints(str(tmp_path / "ckpt"),
                     CheckpointOptions(keep=3, keep_every_steps=0, async_save=False),
                     to_tree=lambda s: {"w": s["w"]}, from_tree=lambda s, t: {**s, "w": t["w"]},
                     meta={"what": "fake"})


def run_loop(checkpoints, program, batches, *, num_steps, log_every, checkpoint_every,
             eval_every=0, writer=None, **kwargs):
  """loop.train_loop of ``program`` from step 0 of the fake state."""
  return loop.train_loop(program.step, {"step": 0, "w": np.zeros(3, np.float32)}, batches,
                         start_step=0, num_steps=num_steps,
                         cadence=Cadence(log_every_steps=log_every,
                                         checkpoint_every_steps=checkpoint_every,
                                         eval_every_steps=eval_every),
                         checkpoints=checkpoints, writer=writer or ListWriter(), **kwargs)


def run_fake(tmp_path, program, num_steps=10, log_every=5, checkpoint_every=100, in_flight=2,
             evaluate=None):
  writer = ListWriter()
  result = run_loop(fake_checkpoints(tmp_path), program, iter(np.ones(num_steps, np.float32)),
                    num_steps=num_steps, log_every=log_every, checkpoint_every=checkpoint_every,
                    writer=writer, evaluate=evaluate, steps_in_flight=in_flight)
  return result, writer


def saved_steps(tmp_path):
  return sorted(int(p) for p in os.listdir(tmp_path / "ckpt") if p.isdigit())


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_at_most_k_steps_run_ahead_of_the_newest_finished_one(tmp_path, in_flight):
  program = FakeProgram()
  run_fake(tmp_path, program, num_steps=12, log_every=100, in_flight=in_flight)
  for step, finished in program.log["finished_when_dispatched"].items():
    # Every step up to step - k had finished on the devices before step was dispatched.
    assert set(range(1, step - in_flight + 1)) <= finished, (step, finished)


def test_sigterm_saves_the_current_step_at_once_and_stops(tmp_path):
  program = FakeProgram(sigterm_at=4)
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(stopping.Stopped) as stopped:
    run_fake(tmp_path, program, num_steps=10, log_every=100, checkpoint_every=100)
  assert (stopped.value.step, stopped.value.signum) == (4, signal.SIGTERM)
  assert max(program.log["finished_when_dispatched"]) == 4  # nothing dispatched after step 4
  assert saved_steps(tmp_path) == [4]
  assert signal.getsignal(signal.SIGTERM) == previous  # the handler is restored


def test_first_ctrl_c_saves_and_stops_and_arms_the_second_to_kill(tmp_path):
  seen = {}

  class CtrlC(FakeProgram):
    def step(self, state, batch):
      if state["step"] + 1 == 3:
        os.kill(os.getpid(), signal.SIGINT)
        seen["after_first"] = signal.getsignal(signal.SIGINT)
      return super().step(state, batch)

  previous = signal.getsignal(signal.SIGINT)
  with pytest.raises(stopping.Stopped) as stopped:
    run_fake(tmp_path, CtrlC(), num_steps=10, log_every=100, checkpoint_every=100)
  assert (stopped.value.step, stopped.value.signum) == (3, signal.SIGINT)
  assert "interrupted (Ctrl-C) at step 3, checkpoint saved" in str(stopped.value)
  assert seen["after_first"] == signal.SIG_DFL  # a second Ctrl-C ends the process at once
  assert saved_steps(tmp_path) == [3]
  assert signal.getsignal(signal.SIGINT) == previous


class Stalling:
  """Batches that stop coming after ``count`` (a source that hangs); records close()."""

  def __init__(self, count):
    self.left, self.closed = count, False

  def __iter__(self):
    return self

  def __next__(self):
    if self.left == 0:
      threading.Event().wait()  # An interruptible wait, like data/iterate.py's queue.
    self.left -= 1
    return np.float32(1.0)

  def close(self):
    self.closed = True


def _signal_after(seconds, signum=signal.SIGTERM):
  timer = threading.Timer(seconds, os.kill, (os.getpid(), signum))
  timer.start()
  return timer


def test_a_signal_while_waiting_for_a_batch_saves_the_last_step_and_stops(tmp_path):
  batches = Stalling(5)
  timer = _signal_after(1.0)
  started = time.monotonic()
  with pytest.raises(stopping.Stopped) as stopped:
    run_loop(fake_checkpoints(tmp_path), FakeProgram(), batches, num_steps=10, log_every=100,
             checkpoint_every=100)
  timer.join()
  assert time.monotonic() - started < 10
  assert stopped.value.step == 5 and saved_steps(tmp_path) == [5]
  assert batches.closed


def test_checkpoint_is_written_before_the_evaluation_that_fails(tmp_path):
  def failing_evaluation(state):
    raise RuntimeError("evaluation broke")

  program = FakeProgram()
  with pytest.raises(RuntimeError, match="evaluation broke"):
    run_fake(tmp_path, program, num_steps=6, log_every=3, checkpoint_every=3,
             evaluate=failing_evaluation)
  assert saved_steps(tmp_path) == [3, 6]  # the last step's checkpoint survives its evaluation


def test_a_signal_during_an_evaluation_stops_with_that_steps_checkpoint(tmp_path):
  def stalled_evaluation(state):
    _signal_after(0.5)
    threading.Event().wait()

  with pytest.raises(stopping.Stopped) as stopped:
    run_fake(tmp_path, FakeProgram(), num_steps=6, log_every=3, checkpoint_every=3,
             evaluate=stalled_evaluation)
  assert stopped.value.step == 6 and saved_steps(tmp_path) == [3, 6]


def test_a_signal_during_an_evaluation_saves_nothing_non_finite(tmp_path):
  """Step 4 evaluates but neither logs nor checkpoints: its NaN is caught before the save."""
  def stalled_evaluation(state):
    _signal_after(0.5)
    threading.Event().wait()

  with pytest.raises(loop.TrainingError, match="non-finite loss at step 4"):
    run_loop(fake_checkpoints(tmp_path), FakeProgram(loss_at={4: float("nan")}),
             iter(np.ones(10, np.float32)), num_steps=10, log_every=100, checkpoint_every=3,
             eval_every=4, evaluate=stalled_evaluation)
  assert saved_steps(tmp_path) == [3]


def test_a_failed_save_is_one_line_naming_the_step_the_error_and_the_intact_step(
    tmp_path, monkeypatch):
  checkpoints = fake_checkpoints(tmp_path)
  manager = checkpoints.manager
  original = manager.save

  def full_disk(step, *args, **kwargs):
    if step == 6:
      os.makedirs(tmp_path / "ckpt" / f"6{ocp.path.step.TMP_DIR_SUFFIX}")  # half written
      # Left by a crash of an earlier run: not the step that failed now.
      os.makedirs(tmp_path / "ckpt" / f"1{ocp.path.step.TMP_DIR_SUFFIX}")
      raise ValueError("RESOURCE_EXHAUSTED: Failed to write 2 bytes to file 7: No space left on "
                       "device [os_error_code='28']")
    return original(step, *args, **kwargs)

  monkeypatch.setattr(manager, "save", full_disk)
  batches = Stalling(10)
  writer = ListWriter()
  with pytest.raises(storage.CheckpointSaveError) as failed:
    run_loop(checkpoints, FakeProgram(), batches, num_steps=10, log_every=100,
             checkpoint_every=3, writer=writer)
  message = str(failed.value)
  assert "\n" not in message
  assert "cannot save checkpoint 6" in message and "no space left on device" in message
  assert " free" in message and "newest intact checkpoint is step 3" in message
  assert failed.value.exit_status == 4
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["3"]  # the half-written step is removed
  assert batches.closed and writer.closed


def test_logs_means_with_progress_and_checkpoints_the_end(tmp_path):
  program = FakeProgram(loss_at={1: -1.0, 2: -2.0, 3: -3.0, 4: -4.0})
  evaluations = []
  result, writer = run_fake(tmp_path, program, num_steps=6, log_every=4, checkpoint_every=3,
                            evaluate=lambda state: evaluations.append(state["step"]) or {"knn": 1})
  logged = {step: row for step, row in writer.rows if "loss" in row}
  assert sorted(logged) == [4, 6]
  assert logged[4]["loss"] == pytest.approx(-2.5)  # mean over steps 1-4
  assert result.metrics["loss"] == pytest.approx(-0.5)
  assert (result.step, result.state["step"], result.evaluation) == (6, 6, {"knn": 1})
  np.testing.assert_array_equal(result.state["w"], np.full(3, 6.0))
  assert (6, {"knn": 1}) in writer.rows
  assert "uptime" in logged[4] and logged[6]["steps_per_sec"] > 0
  assert evaluations == [6] and writer.closed
  assert saved_steps(tmp_path) == [3, 6]


def test_a_step_is_flushed_to_the_metrics_before_its_checkpoint_starts(tmp_path, monkeypatch):
  """A kill after checkpoint s exists must not lose step s's metrics (the resume starts at s+1)."""
  flushed_at_save, original, writer = {}, storage.save, ListWriter()

  def recording_save(manager, step, tree, meta):
    flushed_at_save[step] = writer.flushed_through
    original(manager, step, tree, meta)

  monkeypatch.setattr(storage, "save", recording_save)
  run_loop(fake_checkpoints(tmp_path), FakeProgram(), iter(np.ones(9, np.float32)),
           num_steps=9, log_every=1, checkpoint_every=3, writer=writer)
  assert flushed_at_save == {3: 3, 6: 6, 9: 9}


def test_progress_times_finished_steps_and_leaves_out_the_first(tmp_path):
  # Step 1 stands for compilation (1 s); the others take 0.05 s each: 20 steps/s.
  seconds = {1: 1.0, **{s: 0.05 for s in range(2, 12)}}
  _, writer = run_fake(tmp_path, FakeProgram(seconds_at=seconds), num_steps=11, log_every=5)
  rates = {step: row["steps_per_sec"] for step, row in writer.rows if "steps_per_sec" in row}
  assert sorted(rates) == [5, 10, 11]
  for step, rate in rates.items():
    assert 10 < rate <= 20.5, (step, rate)  # never the dispatch rate, never the compile


def test_non_finite_loss_stops_before_the_checkpoint(tmp_path):
  program = FakeProgram(loss_at={3: float("nan")})
  with pytest.raises(loop.TrainingError, match=r"non-finite loss at step 3"):
    run_fake(tmp_path, program, num_steps=6, log_every=100, checkpoint_every=3)
  assert saved_steps(tmp_path) == []


def test_any_non_finite_loss_term_stops_the_run():
  loop.check_finite({"loss": 1.0, "probe_loss": 2.0, "lr": float("nan")}, 1)  # lr is not watched
  with pytest.raises(loop.TrainingError, match=r"non-finite probe_loss at step 7"):
    loop.check_finite({"loss": 1.0, "probe_loss": float("inf")}, 7)


def test_the_loop_refuses_no_steps_in_flight(tmp_path):
  with pytest.raises(UserError, match="steps_in_flight=0 must be a positive integer"):
    run_fake(tmp_path, FakeProgram(), in_flight=0)


def test_checkpoints_resume_the_newest_step_or_init(tmp_path):
  run_fake(tmp_path, FakeProgram(), num_steps=6, log_every=3, checkpoint_every=3)
  fresh = {"step": 0, "w": np.zeros(3, np.float32)}
  checkpoints = fake_checkpoints(tmp_path)
  state, step = checkpoints.restore_or_init(lambda: fresh)
  checkpoints.close()
  assert step == 6
  np.testing.assert_array_equal(state["w"], np.full(3, 6.0))
  empty = fake_checkpoints(tmp_path / "other")
  assert empty.restore_or_init(lambda: fresh) == (fresh, 0)
  empty.close()


def test_lr_is_logged_at_the_logged_step_and_losses_as_window_means(tmp_path):
  def step(state, batch):
    n = state["step"] + 1
    return {**state, "step": n}, {"loss": float(-n), "lr": 0.1 * n}

  writer = ListWriter()
  run_loop(fake_checkpoints(tmp_path), type("P", (), {"step": staticmethod(step)}),
           iter(np.ones(6, np.float32)), num_steps=6, log_every=4, checkpoint_every=100,
           writer=writer)
  logged = {s: row for s, row in writer.rows if "loss" in row}
  assert logged[4]["lr"] == pytest.approx(0.4) and logged[6]["lr"] == pytest.approx(0.6)
  assert logged[4]["loss"] == pytest.approx(-2.5) and logged[6]["loss"] == pytest.approx(-5.5)


@pytest.fixture
def console_lines(monkeypatch):
  """The lines progress.py prints (recorded directly: other tests may quiet absl's logger)."""
  lines = []
  monkeypatch.setattr(progress.logging, "info", progress_recorder(lines))
  return lines


def test_console_says_compiling_and_step_1_and_progress_at_log_steps(tmp_path, console_lines):
  writer = ListWriter()
  run_loop(fake_checkpoints(tmp_path), FakeProgram(seconds_at={1: 0.3}),
           iter(np.ones(6, np.float32)), num_steps=6, log_every=4, checkpoint_every=100,
           writer=writer, examples_per_step=32)
  lines = console_lines
  assert lines[0] == "Compiling the training step (XLA) ..."
  assert lines[1].startswith("Compiled the training step in 0.") and lines[1].endswith(" s.")
  assert lines[2] == "step 1/6 (first step done), loss -0.5000."
  assert lines[3].startswith("step 4/6, ") and "img/s, ETA " in lines[3]
  assert lines[4].startswith("step 6/6, ") and len(lines) == 5


def test_a_long_step_gets_a_progress_line_without_waiting_for_a_log_step(tmp_path, console_lines,
                                                                         monkeypatch):
  monkeypatch.setattr(progress, "INTERVAL_SECONDS", 0.3)
  run_loop(fake_checkpoints(tmp_path), FakeProgram(seconds_at={4: 1.2}),
           iter(np.ones(5, np.float32)), num_steps=5, log_every=100, checkpoint_every=100)
  silent = [line for line in console_lines if " running for " in line]
  assert silent and silent[0].startswith("step ") and "steps/s" in silent[0]


def test_only_process_0_writes_to_the_console(tmp_path, console_lines, caplog):
  caplog.set_level("INFO")
  writer = metric_writer.create_writer(str(tmp_path), is_main_process=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.flush()
  quiet = progress.ConsoleProgress(start_step=0, num_steps=5, examples_per_step=8,
                                   enabled=False)
  with quiet, quiet.compiling():
    quiet.finished(1, -0.5)
  assert not console_lines and not caplog.records and not os.listdir(tmp_path)
