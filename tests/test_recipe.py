"""The pretraining recipe: the network, schedule and step that PretrainOptions build on a mesh."""
import subprocess
import sys

import jax
import pytest

from configs import imagenet
from mixsiam_jax import models, optim, recipe, sharding
from mixsiam_jax.models.mixsiam import DTYPES
from mixsiam_jax.options import programs
from tests.helpers import pretrain_options


@pytest.mark.parametrize("half_precision,cpu,tpu", [
    (None, "float32", "bfloat16"), (True, "bfloat16", "bfloat16"), (False, "float32", "float32")])
def test_half_precision_switch_picks_the_compute_dtype(half_precision, cpu, tpu):
  model = pretrain_options("tiny", half_precision=half_precision).model
  assert (model.compute_dtype("cpu"), model.compute_dtype("tpu")) == (cpu, tpu)
  for platform, dtype in (("cpu", cpu), ("tpu", tpu)):
    network = models.MixSiamNetwork(model, platform)
    assert network.bind({}).backbone.dtype == DTYPES[dtype]


@pytest.mark.parametrize("variant,batch,warmup", [("", 128, 0), ("b512", 512, 0),
                                                  ("b4096", 4096, 10)])
def test_imagenet_variants_are_valid_recipes(variant, batch, warmup):
  """Batch and warm-up of each variant; lr by the linear rule (0.05 x batch / 256)."""
  opts = programs.pretrain_options(imagenet.get_config(variant))
  assert (opts.batch_size, opts.optim.warmup_epochs) == (batch, warmup)
  assert (opts.model.depth, opts.model.stem, opts.image_size) == (50, "imagenet", 224)
  assert opts.optim.base_lr == 0.05


def test_training_length_and_schedule_follow_epochs_and_batch():
  """10 epochs of 1000 examples at batch 100 = 100 steps; 2 warm-up epochs = 20 steps;
  peak lr = base_lr x 100 / 256 at the end of the warm-up, 0 at the end."""
  opts = pretrain_options("tiny", batch_size=100, num_train_steps=-1, num_epochs=10,
                          optim__warmup_epochs=2)
  training = recipe.build_training(opts, sharding.create_mesh(jax.devices()[:1]),
                                   num_examples=1000, num_classes=10)
  assert training.num_steps == 100
  assert training.network.model.num_classes == 10  # the online probe's classes
  peak = optim.scaled_learning_rate(opts.optim.base_lr, 100)
  assert float(training.schedule(20)) == pytest.approx(peak, rel=1e-6)
  assert float(training.schedule(10)) == pytest.approx(peak / 2, rel=1e-6)
  assert float(training.schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_the_recipe_and_the_compile_planner_import_no_tensorflow():
  """The planner and the accelerator check run where only JAX is installed (an
  accelerator image without TensorFlow): neither may pull in the data pipeline."""
  code = ("import sys; import mixsiam_jax.planning.planner, mixsiam_jax.recipe; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'clu', 'orbax'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"JAX_PLATFORMS": "cpu", "PATH": ""}, cwd=recipe.__file__.rsplit(
                           "/mixsiam_jax/", 1)[0])
  assert out.stdout.strip() == "[]", out.stdout


def test_the_online_probe_gets_the_classes_of_the_data_only_when_on():
  assert recipe.model_options(pretrain_options("tiny"), 10).num_classes == 10
  assert recipe.model_options(pretrain_options("tiny", online_probe=False), 10).num_classes == 0
  assert recipe.model_options(pretrain_options("tiny"), 0).num_classes == 0  # unlabelled data
