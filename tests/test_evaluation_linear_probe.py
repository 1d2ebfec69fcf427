"""evaluation/linear_probe.py: the probe's step, and the program on the shared loop."""
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from configs import linear_probe as probe_config
from mixsiam_jax import sharding
from mixsiam_jax.checkpoints import reader, storage
from mixsiam_jax.evaluation import linear_probe, program
from mixsiam_jax.options.checks import OptionsError
from mixsiam_jax.options.programs import from_config
from mixsiam_jax.workdir import metrics_file
from tests.helpers import snapshot


def test_probe_step_reports_train_accuracy_in_percent():
  mesh = sharding.create_mesh()
  head = linear_probe.linear_head(4)
  # Classifies one-hots perfectly (host arrays: the step donates the state's copies).
  params = {"kernel": 10.0 * np.eye(4, dtype=np.float32), "bias": np.zeros(4, np.float32)}
  state = linear_probe.ProbeState.create(apply_fn=head.apply, params=params, tx=optax.sgd(0.1))
  labels = np.arange(8) % 4
  batch = {"features": np.eye(4, dtype=np.float32)[labels], "label": labels.astype(np.int32)}
  step = linear_probe.make_probe_step(None, mesh, optax.constant_schedule(0.25))
  state, metrics = step(state, {}, sharding.global_batch(batch, mesh))
  assert float(metrics["probe_train_top1"]) == 100.0  # Percent, like probe_top1 and knn_top1.
  assert float(metrics["lr"]) == 0.25 and int(state.step) == 1


def _probe_config(folder, pretrained, variant="", **overrides):
  config = probe_config.get_config(variant)
  config.pretrained = str(pretrained)
  config.dataset = config.eval_dataset = f"folder:{folder}"
  config.eval_batch_size = 40
  config.batch_size = 40
  config.num_train_steps = 6
  config.log_every_steps = 3
  config.checkpoint_every_steps = 3
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.slow
def test_augmented_probe_trains_on_one_view_resumes_and_leaves_the_run_untouched(
    tiny_pretrained, cifar_jpeg_folder, tmp_path, monkeypatch):
  before = snapshot(tiny_pretrained, mtimes=True)
  views = []
  create = linear_probe.pipeline.create_pretrain_dataset

  def spy(options, **kwargs):
    views.append(options.num_views)
    return create(options, **kwargs)

  monkeypatch.setattr(linear_probe.pipeline, "create_pretrain_dataset", spy)
  config = _probe_config(cifar_jpeg_folder, tiny_pretrained)
  probe_dir = tmp_path / "probe"
  probe = linear_probe.run_linear_probe(from_config(config), str(probe_dir))
  # One crop per image and step, not two with one thrown away (the program opens the
  # stream once to check the data, then once to read it).
  assert views and set(views) == {1}
  assert probe["probe_steps"] == 6 and 0 <= probe["probe_top1"] <= probe["probe_top5"] <= 100
  assert probe["pretrained_step"] == 6 and probe["image_size"] == 16
  assert json.loads((probe_dir / "results.json").read_text()) == probe
  assert sorted(p.name for p in (probe_dir / "checkpoints").iterdir()) == ["3", "6"]
  rows = metrics_file.read_metrics(str(probe_dir))
  assert [r["step"] for r in rows] == [3, 6] and rows[-1]["probe_top1"] == probe["probe_top1"]
  # Metrics are metrics: what was probed goes to results.json only.
  assert not {"pretrained_step", "image_size", "probe_steps"} & set(rows[-1])
  assert all(0.0 <= r["probe_train_top1"] <= 100.0 for r in rows)
  # Resume: the finished probe restores its classifier and gives the same numbers.
  assert linear_probe.run_linear_probe(from_config(config), str(probe_dir)) == probe
  assert snapshot(tiny_pretrained, mtimes=True) == before


@pytest.mark.slow
def test_a_resumed_probe_keeps_the_pretraining_step_it_started_with(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  pretrained = tmp_path / "pretrained"
  shutil.copytree(tiny_pretrained, pretrained)
  shutil.rmtree(pretrained / "checkpoints" / "6")  # The pretraining run is at step 3.
  config = _probe_config(cifar_jpeg_folder, pretrained, "fast")
  probe_dir = tmp_path / "probe"
  first = linear_probe.run_linear_probe(from_config(config), str(probe_dir))
  assert first["pretrained_step"] == 3
  # Pretraining goes on (step 6 appears) while the probe is interrupted after its step 3.
  shutil.copytree(tiny_pretrained / "checkpoints" / "6", pretrained / "checkpoints" / "6")
  shutil.rmtree(probe_dir / "checkpoints" / "6")
  resumed = linear_probe.run_linear_probe(from_config(config), str(probe_dir))
  assert resumed["pretrained_step"] == 3 and resumed == first
  # The step it started on is gone: refused, naming it.
  shutil.rmtree(pretrained / "checkpoints" / "3")
  shutil.rmtree(probe_dir / "checkpoints" / "6")
  with pytest.raises(linear_probe.ProbeError,
                     match=r"linear probe of step 3 of pretrained=.*no longer has that "
                           r"checkpoint \(it has \[6\]\)"):
    linear_probe.run_linear_probe(from_config(config), str(probe_dir))


@pytest.mark.parametrize("steps", [-5, 0])
def test_the_probe_refuses_a_run_length_that_would_mean_epochs(steps, tmp_path):
  config = _probe_config(tmp_path / "no_data", tmp_path / "no_run", num_train_steps=steps)
  with pytest.raises(OptionsError, match=rf"^num_train_steps={steps} must be -1 \(derive it "
                                         r"from num_epochs\) or a positive number of steps\.$"):
    linear_probe.run_linear_probe(from_config(config), str(tmp_path / "probe"))
  assert not (tmp_path / "probe").exists()


def _replace_with_another_run(pretrained):
  """Rewrites the checkpoints of a pretraining workdir with other parameters of the same
  shapes: the workdir of another run of the same config, at the same path and steps."""
  mesh = sharding.create_mesh(jax.devices()[:1])
  directory = storage.checkpoint_dir(str(pretrained))
  for step in sorted(int(n) for n in os.listdir(directory) if n.isdigit()):
    tree, meta, _ = reader.restore_replicated(
        str(pretrained), mesh, step, items=("step", "params", "batch_stats"))
    tree["params"] = jax.tree.map(lambda x: x * 1.01, tree["params"])
    shutil.rmtree(os.path.join(directory, str(step)))
    manager = storage.create_manager(directory, async_save=False)
    storage.save(manager, step, tree, meta)
    manager.close()


@pytest.mark.slow
def test_a_probe_refuses_to_resume_on_a_replaced_pretraining_run(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  pretrained = tmp_path / "pretrained"
  shutil.copytree(tiny_pretrained, pretrained)
  config = _probe_config(cifar_jpeg_folder, pretrained, "fast", num_train_steps=3)
  probe_dir = tmp_path / "probe"
  linear_probe.run_linear_probe(from_config(config), str(probe_dir))
  manager = storage.create_manager(storage.checkpoint_dir(str(probe_dir)), read_only=True)
  meta = storage.read_meta(manager, 3)
  manager.close()
  recorded = meta["pretrained_fingerprint"]
  assert meta["pretrained_step"] == 6 and meta["pretrained"] == str(pretrained)
  assert recorded == program.restore(from_config(config).encoder,
                                     sharding.create_mesh()).fingerprint

  _replace_with_another_run(pretrained)
  before = snapshot(probe_dir, mtimes=True)
  with pytest.raises(linear_probe.ProbeError) as err:
    linear_probe.run_linear_probe(from_config(config), str(probe_dir))
  message = str(err.value)
  assert message.startswith(f"--workdir={probe_dir} holds a linear probe of another encoder: "
                            f"pretrained={pretrained} (step 6) now has parameter hash ")
  assert f"the probe started on {recorded[:12]}" in message and "new --workdir" in message
  assert snapshot(probe_dir, mtimes=True) == before
