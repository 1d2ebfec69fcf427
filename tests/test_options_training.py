"""Option objects: every invalid value is refused when built, naming the config field."""
import dataclasses
import re

import pytest

from mixsiam_jax.errors import UserError
from mixsiam_jax.options import checks
from tests import helpers


@pytest.mark.parametrize("kwargs,needle", [
    (dict(lam=1.5), "method.lam=1.5"),
    (dict(lam=-0.1), "method.lam=-0.1"),
    (dict(mix_lambda=2.0), "method.mix_lambda=2.0"),
    (dict(aggregation="min"), "method.aggregation='min'"),
    (dict(mix_mode="warp"), "method.mix_mode='warp'"),
    (dict(mix_mode="beta", mix_alpha=0.0), "method.mix_alpha=0.0"),
    (dict(mix_prob=1.2), "method.mix_prob=1.2"),
    (dict(mixture="yes"), "method.mixture='yes'"),
])
def test_bad_method_options_name_the_field(kwargs, needle):
  with pytest.raises(checks.OptionsError, match=needle.replace(".", r"\.")):
    helpers.method(**kwargs)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(grayscale_prob=1.5), "data.grayscale_prob=1.5"),
    (dict(color_jitter=(0.4, 0.4, 0.4, 0.7)), "hue <= 0.5"),
    (dict(color_jitter=(0.4, 0.4)), "data.color_jitter=(0.4, 0.4)"),
    (dict(blur_sigma=(2.0, 0.1)), "data.blur_sigma=(2.0, 0.1)"),
])
def test_bad_photometric_options_name_the_field(kwargs, needle):
  with pytest.raises(checks.OptionsError, match=needle.replace(".", r"\.").replace("(", r"\(")
                     .replace(")", r"\)")):
    helpers.photometric(**kwargs)


def test_photometric_options_are_hashable_float_tuples():
  a = helpers.photometric(color_jitter=[0.4, 0.4, 0.4, 0.1], blur_sigma=[0.1, 2])
  b = helpers.photometric()
  assert a == b and hash(a) == hash(b)  # usable as a static jit argument
  assert a.blur_sigma == (0.1, 2.0) and isinstance(a.blur_sigma[1], float)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(depth=20), "model.depth=20"),
    (dict(stem="vit"), "model.stem='vit'"),
    (dict(width=0), "model.width=0"),
    (dict(projector_dim=True), "model.projector_dim=True"),
    (dict(half_precision="yes"), "half_precision='yes'"),
    (dict(conv_impl="fft"), "model.conv_impl='fft'"),
])
def test_bad_model_options_name_the_field(kwargs, needle):
  with pytest.raises(checks.OptionsError, match=needle.replace(".", r"\.")):
    helpers.model_options(**kwargs)


@pytest.mark.parametrize("platform,dtype,conv", [
    ("cpu", "float32", "matmul_weight_grad"), ("gpu", "bfloat16", "xla"),
    ("tpu", "bfloat16", "xla")])
def test_platform_defaults_come_from_the_platform_argument(platform, dtype, conv):
  model = helpers.model_options()
  assert model.compute_dtype(platform) == dtype
  assert model.conv_implementation(platform) == conv
  forced = dataclasses.replace(model, half_precision=False, conv_impl="xla")
  assert (forced.compute_dtype(platform), forced.conv_implementation(platform)) == (
      "float32", "xla")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(base_lr=-1.0), "optim.base_lr=-1.0 must be a positive number"),
    (dict(base_lr=0.0), "optim.base_lr=0.0"),
    (dict(momentum=1.0), "optim.momentum=1.0"),
    (dict(weight_decay=-1e-4), "optim.weight_decay=-0.0001"),
    (dict(name="adam"), "optim.name='adam'"),
])
def test_bad_optim_options_name_the_field(kwargs, needle):
  with pytest.raises(checks.OptionsError, match=needle.replace(".", r"\.")):
    helpers.optim_options(**kwargs)


def test_options_errors_are_user_errors():
  assert issubclass(checks.OptionsError, UserError)
  with pytest.raises(ValueError):  # main.py and callers may catch ValueError
    helpers.method(lam=2.0)


@pytest.mark.parametrize("steps,epochs,needle", [
    (-5, 800, "num_train_steps=-5 must be -1 (derive it from num_epochs) or a positive number"),
    (0, 800, "num_train_steps=0 must be -1"),
    (-2, 800, "num_train_steps=-2 must be -1"),
    (True, 800, "num_train_steps=True must be -1"),
    (2.5, 800, "num_train_steps=2.5 must be -1"),
    (-1, 0, "num_epochs=0 must be a positive number when num_train_steps=-1"),
    (-1, -3.0, "num_epochs=-3.0 must be a positive number"),
])
def test_a_run_length_is_minus_one_or_positive(steps, epochs, needle):
  with pytest.raises(checks.OptionsError, match=re.escape(needle)):
    checks.check_duration(steps, epochs)


@pytest.mark.parametrize("steps,epochs", [(-1, 800), (-1, 0.5), (6, 0), (6, -1)])
def test_valid_run_lengths_pass(steps, epochs):
  checks.check_duration(steps, epochs)
