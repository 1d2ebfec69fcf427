"""Losses against an independent float64 NumPy reference of the paper's Eqs. 1-8."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixsiam_jax import losses

B, D = 6, 5


def np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def np_D(p, z):
  """Eq. 1 averaged over the batch."""
  return -np.mean(np.sum(np_normalize(p) * np_normalize(z), axis=-1))


def np_dD_dp(p, z):
  """Gradient of Eq. 1 (batch mean) with respect to p, with z constant."""
  norm = np.linalg.norm(p, axis=-1, keepdims=True)
  ph, zh = p / norm, np_normalize(z)
  cos = np.sum(ph * zh, axis=-1, keepdims=True)
  return -(zh - cos * ph) / norm / p.shape[0]


def np_mixsiam(p, z, lam, target):
  siam = 0.5 * np_D(p[:, 0], z[:, 1]) + 0.5 * np_D(p[:, 1], z[:, 0])
  mix = np_D(p[:, 2], target)
  return lam * siam + (1 - lam) * mix, siam, mix


@pytest.fixture
def pz():
  rs = np.random.RandomState(0)
  return rs.randn(B, 3, D), rs.randn(B, 3, D)


@pytest.mark.parametrize("aggregation,agg_fn", [("max", np.maximum),
                                                ("mean", lambda a, b: 0.5 * (a + b))])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_loss_values_match_numpy(pz, lam, aggregation, agg_fn):
  p, z = pz
  loss, aux = losses.mixsiam_loss(jnp.asarray(p, jnp.float32), jnp.asarray(z, jnp.float32),
                                  lam=lam, aggregation=aggregation)
  ref, siam, mix = np_mixsiam(p, z, lam, agg_fn(z[:, 0], z[:, 1]))
  if lam == 1.0:
    ref, mix = siam, 0.0
  # float32 against float64: a few ulps of values of order 1.
  np.testing.assert_allclose(loss, ref, atol=1e-6)
  np.testing.assert_allclose(aux["loss_siam"], siam, atol=1e-6)
  np.testing.assert_allclose(aux["loss_mix"], mix, atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_gradients_match_numpy_and_targets_get_none(pz, lam):
  p, z = pz
  grad_p, grad_z = jax.grad(
      lambda p_, z_: losses.mixsiam_loss(p_, z_, lam=lam, aggregation="max")[0], argnums=(0, 1))(
          jnp.asarray(p, jnp.float32), jnp.asarray(z, jnp.float32))
  z_f = np.maximum(z[:, 0], z[:, 1])
  expected = np.zeros_like(p)
  expected[:, 0] = lam * 0.5 * np_dD_dp(p[:, 0], z[:, 1])
  expected[:, 1] = lam * 0.5 * np_dD_dp(p[:, 1], z[:, 0])
  if lam < 1.0:
    expected[:, 2] = (1 - lam) * np_dD_dp(p[:, 2], z_f)
  np.testing.assert_allclose(grad_p, expected, atol=2e-7)
  # Every z enters only as a stop-gradient target: its gradient is exactly zero.
  assert np.all(np.asarray(grad_z) == 0.0)


def test_simsiam_when_lam_is_one_ignores_the_mixed_view(pz):
  p, z = pz
  loss3, _ = losses.mixsiam_loss(jnp.asarray(p), jnp.asarray(z), lam=1.0)
  loss2, aux = losses.mixsiam_loss(jnp.asarray(p[:, :2]), jnp.asarray(z[:, :2]), lam=1.0)
  simsiam = 0.5 * np_D(p[:, 0], z[:, 1]) + 0.5 * np_D(p[:, 1], z[:, 0])
  np.testing.assert_allclose([loss3, loss2], [simsiam, simsiam], atol=1e-6)
  assert float(aux["loss_mix"]) == 0.0


def test_aggregation_none_picks_one_view_per_example(pz):
  _, z = pz
  z1, z2 = jnp.asarray(z[:, 0]), jnp.asarray(z[:, 1])
  z_f = np.asarray(losses.aggregate(z1, z2, "none", jax.random.key(3)))
  from_first = np.all(z_f == z[:, 0].astype(np.float32), axis=-1)
  from_second = np.all(z_f == z[:, 1].astype(np.float32), axis=-1)
  assert np.all(from_first ^ from_second)
  # Over many examples both views are chosen about half the time.
  big = jax.random.normal(jax.random.key(0), (2, 4000, 3))
  picked = losses.aggregate(big[0], big[1], "none", jax.random.key(1))
  frac = float(jnp.mean(jnp.all(picked == big[0], axis=-1)))
  assert abs(frac - 0.5) < 0.03  # ~4 standard deviations of a Binomial(4000, 0.5) fraction


def test_cosine_matches_definition_and_scale_invariance():
  rs = np.random.RandomState(1)
  p, z = rs.randn(4, 7), rs.randn(4, 7)
  chex.assert_trees_all_close(losses.negative_cosine(jnp.asarray(p), jnp.asarray(z)),
                              np_D(p, z), atol=1e-6)
  chex.assert_trees_all_close(losses.negative_cosine(jnp.asarray(3 * p), jnp.asarray(0.1 * z)),
                              np_D(p, z), atol=1e-6)
  # Identical directions give D = -1, opposite ones +1.
  assert float(losses.negative_cosine(jnp.asarray(p), jnp.asarray(2 * p))) == pytest.approx(-1, abs=1e-6)
  assert float(losses.negative_cosine(jnp.asarray(p), jnp.asarray(-p))) == pytest.approx(1, abs=1e-6)


def test_mixed_loss_needs_three_views(pz):
  p, z = pz
  with pytest.raises(ValueError, match="expected 3"):
    losses.mixsiam_loss(jnp.asarray(p[:, :2]), jnp.asarray(z[:, :2]), lam=0.5)
