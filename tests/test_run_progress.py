"""Tests of mixsiam_jax/run/progress.py: the console lines of a loop, on a fake clock."""
import pytest

from mixsiam_jax.run import progress
from tests.helpers import progress_recorder


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


@pytest.mark.parametrize("seconds,text", [(0, "0 s"), (59.4, "59 s"), (61, "1m01s"),
                                          (3600 * 26 + 120, "26h02m")])
def test_format_seconds(seconds, text):
  assert progress.format_seconds(seconds) == text


def test_status_has_rate_images_eta_loss_and_what_runs_now(monkeypatch):
  # Recorded directly: another test may have quieted absl's logger.
  lines = []
  monkeypatch.setattr(progress.logging, "info", progress_recorder(lines))
  clock = Clock()
  console = progress.ConsoleProgress(start_step=10, num_steps=110, examples_per_step=256,
                                     enabled=True, interval=30, clock=clock)
  clock.now += 5
  assert console._status() == "step 10/110: starting (5 s so far)."  # pylint: disable=protected-access
  with console.compiling():
    clock.now += 42
  console.training()
  console.finished(11, -0.25)
  clock.now += 20
  console.finished(21, -0.5)  # 10 steps in 20 s after the first: 0.5 steps/s, 128 img/s
  clock.now += 15
  assert lines == ["Compiling the training step (XLA) ...",
                   "Compiled the training step in 42.0 s.",
                   "step 11/110 (first step done), loss -0.2500."]
  assert console._status() == ("step 21/110, 0.5 steps/s, 128 img/s, ETA 2m58s, loss -0.5000; "  # pylint: disable=protected-access
                               "step 22 running for 15 s.")
  with console.phase("evaluating at step 21"):
    clock.now += 70
    assert console._status().endswith("; now evaluating at step 21 (1m10s).")  # pylint: disable=protected-access
