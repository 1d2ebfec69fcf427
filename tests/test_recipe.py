"""The pretraining recipe: options read from configs, and the step they build on a mesh."""
import subprocess
import sys

import jax
import pytest

from configs import cifar10, imagenet
from mixsiam_jax import optim, recipe, sharding
from mixsiam_jax.options import OptionsError


@pytest.mark.parametrize("half_precision,meta_dtype,cpu,tpu", [
    (None, "auto", "float32", "bfloat16"), (True, "bfloat16", "bfloat16", "bfloat16"),
    (False, "float32", "float32", "float32")])
def test_half_precision_switch_picks_the_compute_dtype(half_precision, meta_dtype, cpu, tpu):
  config = cifar10.get_config("tiny")
  config.half_precision = half_precision
  model = recipe.options_from_config(config).model
  assert recipe.model_meta(model)["dtype"] == meta_dtype
  assert (model.compute_dtype("cpu"), model.compute_dtype("tpu")) == (cpu, tpu)


@pytest.mark.parametrize("variant,batch,warmup", [("", 128, 0), ("b512", 512, 0),
                                                  ("b4096", 4096, 10)])
def test_imagenet_variants_are_valid_recipes(variant, batch, warmup):
  """Batch and warm-up of each variant; lr by the linear rule (0.05 x batch / 256)."""
  opts = recipe.options_from_config(imagenet.get_config(variant))
  assert (opts.batch_size, opts.optim.warmup_epochs) == (batch, warmup)
  assert (opts.model.depth, opts.model.stem, opts.image_size) == (50, "imagenet", 224)
  assert opts.optim.base_lr == 0.05


def test_pretraining_refuses_the_probe_optimiser():
  config = cifar10.get_config("tiny")
  config.optim.name = "lars"
  with pytest.raises(OptionsError, match=r"optim\.name='lars': pretraining uses 'sgd'"):
    recipe.options_from_config(config)


def test_training_length_and_schedule_follow_epochs_and_batch():
  """10 epochs of 1000 examples at batch 100 = 100 steps; 2 warm-up epochs = 20 steps;
  peak lr = base_lr x 100 / 256 at the end of the warm-up, 0 at the end."""
  config = cifar10.get_config("tiny")
  config.batch_size, config.num_train_steps, config.num_epochs = 100, -1, 10
  config.optim.warmup_epochs = 2
  opts = recipe.options_from_config(config)
  training = recipe.build_training(opts, sharding.create_mesh(jax.devices()[:1]),
                                   num_examples=1000)
  assert training.num_steps == 100
  peak = optim.scaled_learning_rate(config.optim.base_lr, 100)
  assert float(training.schedule(20)) == pytest.approx(peak, rel=1e-6)
  assert float(training.schedule(10)) == pytest.approx(peak / 2, rel=1e-6)
  assert float(training.schedule(100)) == pytest.approx(0.0, abs=1e-9)


def test_the_recipe_and_the_compile_planner_import_no_tensorflow():
  """The planner and the accelerator check run where only JAX is installed (an
  accelerator image without TensorFlow): neither may pull in the data pipeline."""
  code = ("import sys; import mixsiam_jax.compile_plan, mixsiam_jax.recipe; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'clu', 'orbax'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"JAX_PLATFORMS": "cpu", "PATH": ""}, cwd=recipe.__file__.rsplit(
                           "/mixsiam_jax/", 1)[0])
  assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("steps", [-5, 0])
def test_the_pretraining_program_refuses_a_run_length_that_would_mean_epochs(steps, tmp_path):
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  config = cifar10.get_config("tiny")
  config.dataset = "folder:/nonexistent"  # never reached: the options are checked first
  config.num_train_steps = steps
  with pytest.raises(OptionsError, match=rf"^num_train_steps={steps} must be -1 \(derive it "
                                         r"from num_epochs\) or a positive number of steps\.$"):
    pretrain.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()

