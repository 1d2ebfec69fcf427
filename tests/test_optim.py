"""Optimisers and schedules against NumPy re-implementations of the PyTorch reference."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixsiam_jax import optim
from mixsiam_jax.errors import UserError
from tests.helpers import optim_options


def test_linear_scaling_rule():
  assert optim.scaled_learning_rate(0.05, 512) == pytest.approx(0.1)
  assert optim.scaled_learning_rate(0.03, 128) == pytest.approx(0.015)


def test_cosine_schedule_matches_formula():
  sched = optim.cosine_schedule(0.1, 100)
  for t in (0, 1, 37, 50, 99, 100):
    assert float(sched(t)) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * t / 100)), abs=1e-7)


def test_warmup_then_cosine():
  sched = optim.cosine_schedule(0.2, 110, warmup_steps=10)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(0.1, abs=1e-7)
  assert float(sched(10)) == pytest.approx(0.2, abs=1e-7)
  assert float(sched(60)) == pytest.approx(0.1, abs=1e-6)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError, match="warmup_steps=20"):
    optim.cosine_schedule(0.1, 20, warmup_steps=20)


def torch_sgd_reference(params, grads_seq, lrs, momentum, wd):
  """torch.optim.SGD: d = g + wd p; buf = m buf + d (buf = d at first); p -= lr buf."""
  p = {k: v.astype(np.float64).copy() for k, v in params.items()}
  buf = {k: None for k in p}
  for grads, lr in zip(grads_seq, lrs):
    for k in p:
      d = grads[k] + wd * p[k]
      buf[k] = d if buf[k] is None else momentum * buf[k] + d
      p[k] = p[k] - lr[k] * buf[k]
  return p


def test_sgd_with_fixed_predictor_lr_matches_torch_reference():
  rs = np.random.RandomState(0)
  params = {"backbone": {"w": rs.randn(3, 2)}, "predictor": {"w": rs.randn(2, 2)}}
  grads_seq = [jax.tree.map(lambda x: rs.randn(*x.shape), params) for _ in range(4)]
  sched = optim.cosine_schedule(0.1, 4)
  tx = optim.create_pretrain_optimizer(schedule=sched, peak_lr=0.1, momentum=0.9,
                                       weight_decay=1e-2, fix_predictor_lr=True)
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(p)
  for g in grads_seq:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, updates)
  flat = lambda t: {"b": t["backbone"]["w"], "p": t["predictor"]["w"]}
  lrs = [{"b": float(sched(i)), "p": 0.1} for i in range(4)]
  ref = torch_sgd_reference(flat(params), [flat(g) for g in grads_seq], lrs, 0.9, 1e-2)
  np.testing.assert_allclose(p["backbone"]["w"], ref["b"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p["predictor"]["w"], ref["p"], rtol=1e-5, atol=1e-6)


def test_sgd_without_fixed_predictor_lr_decays_everything():
  params = {"backbone": {"w": jnp.ones((2,))}, "predictor": {"w": jnp.ones((2,))}}
  sched = optim.cosine_schedule(0.1, 2)
  tx = optim.create_pretrain_optimizer(schedule=sched, peak_lr=0.1, momentum=0.0,
                                       weight_decay=0.0, fix_predictor_lr=False)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    _, state = tx.update(grads, state, params)
  updates, _ = tx.update(grads, state, params)  # step 2 of 2: lr = 0 for every parameter
  np.testing.assert_allclose(updates["predictor"]["w"], 0.0, atol=1e-8)


def test_lars_matches_official_simsiam_lars():
  rs = np.random.RandomState(1)
  params = {"kernel": rs.randn(4, 3), "bias": rs.randn(3)}
  grads_seq = [{k: rs.randn(*v.shape) for k, v in params.items()} for _ in range(3)]
  lr, wd, mom, eta = 0.5, 1e-3, 0.9, 0.001
  tx = optim.create_lars(schedule=lr, momentum=mom, weight_decay=wd, trust_coefficient=eta)
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(p)
  for g in grads_seq:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, updates)
  # NumPy transcription of main_lincls.py's LARS.step().
  ref = {k: v.copy() for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for g in grads_seq:
    for k in ref:
      dp = g[k]
      if ref[k].ndim > 1:
        dp = dp + wd * ref[k]
        pn, un = np.linalg.norm(ref[k]), np.linalg.norm(dp)
        dp = dp * (eta * pn / un if pn > 0 and un > 0 else 1.0)
      mu[k] = mom * mu[k] + dp
      ref[k] = ref[k] - lr * mu[k]
  for k in ref:
    np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-6)


def _first_update(tx, params, grads):
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_create_optimizer_follows_the_options():
  """sgd holds the predictor at peak_lr only with a predictor; lars is create_lars."""
  params = {"backbone": jnp.ones((3, 2)), "predictor": jnp.ones((3, 2))}
  grads = {"backbone": jnp.full((3, 2), 2.0), "predictor": jnp.full((3, 2), 2.0)}
  schedule = lambda step: 0.5  # the encoder's lr at step 0; peak_lr below is 1.0
  sgd = optim_options(name="sgd", momentum=0.9, weight_decay=0.0, fix_predictor_lr=True)
  held = _first_update(optim.create_optimizer(sgd, schedule, 1.0, has_predictor=True),
                       params, grads)
  np.testing.assert_allclose(held["backbone"], -1.0)   # -0.5 x 2
  np.testing.assert_allclose(held["predictor"], -2.0)  # -1.0 x 2
  plain = _first_update(optim.create_optimizer(sgd, schedule, 1.0, has_predictor=False),
                        params, grads)
  np.testing.assert_allclose(plain["predictor"], -1.0)
  lars = optim_options(name="lars", momentum=0.9, weight_decay=1e-3)
  got = _first_update(optim.create_optimizer(lars, schedule, 1.0, has_predictor=False),
                      params, grads)
  want = _first_update(optim.create_lars(schedule=schedule, momentum=0.9, weight_decay=1e-3),
                       params, grads)
  chex.assert_trees_all_close(got, want, rtol=0, atol=0)


def test_steps_from_steps_or_epochs():
  assert optim.steps("n", steps=7, epochs=3, num_examples=100, batch_size=10) == 7
  assert optim.steps("n", steps=-1, epochs=3, num_examples=105, batch_size=10) == 30
  assert optim.steps("n", steps=0, epochs=0.5, num_examples=100, batch_size=10) == 5
  assert optim.steps("n", steps=-1, epochs=0, num_examples=100, batch_size=10) == 0
  with pytest.raises(UserError, match=r"batch_size=200 is larger than the data set \(100"):
    optim.steps("n", steps=-1, epochs=1, num_examples=100, batch_size=200)
