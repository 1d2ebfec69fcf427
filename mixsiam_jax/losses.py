"""MixSiam's objective (paper Eqs. 1-8), with stop-gradient exactly where the paper puts it.

All functions take per-view arrays [B, D] and return scalars averaged over the
batch. Under jax.jit with a sharded batch the means are over the global batch.
"""
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from mixsiam_jax.options.training import AGGREGATIONS

_EPS = 1e-8  # torch.nn.functional.normalize / cosine_similarity guard


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / max(||x||_2, eps) along ``axis`` (torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, _EPS)


def cosine_similarity(p: jax.Array, z: jax.Array) -> jax.Array:
  """Row-wise cosine similarity of [B, D] arrays; returns [B]."""
  return jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """D(p, z) of Eq. 1, averaged over the batch. No stop-gradient: callers apply it."""
  return -jnp.mean(cosine_similarity(p, z))


def siamese_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
  """L_siam of Eq. 5: 0.5 D(p1, sg(z2)) + 0.5 D(p2, sg(z1))."""
  sg = jax.lax.stop_gradient
  return 0.5 * negative_cosine(p1, sg(z2)) + 0.5 * negative_cosine(p2, sg(z1))


def aggregate(z1: jax.Array, z2: jax.Array, aggregation: str,
              rng: Optional[jax.Array] = None) -> jax.Array:
  """The mixed branch's target z_f (Eq. 6 and the ablations).

  Args:
    z1: projections of view 1 [B, D].
    z2: projections of view 2 [B, D].
    aggregation: 'max' (element-wise maximum, the paper), 'mean', or 'none'
      (per example, the z of one view chosen uniformly at random).
    rng: PRNG key, required for 'none'.

  Returns:
    z_f [B, D]. Not stop-gradient'ed: mix_loss does that.
  """
  if aggregation == "max":
    return jnp.maximum(z1, z2)
  if aggregation == "mean":
    return 0.5 * (z1 + z2)
  if aggregation == "none":
    if rng is None:
      raise ValueError("aggregation='none' needs an rng to pick a view per example.")
    pick_first = jax.random.bernoulli(rng, 0.5, (z1.shape[0], 1))
    return jnp.where(pick_first, z1, z2)
  raise ValueError(f"method.aggregation={aggregation!r} must be one of {AGGREGATIONS}.")


def mix_loss(p_m: jax.Array, z_f: jax.Array) -> jax.Array:
  """L_mix of Eq. 7: D(p_m, sg(z_f))."""
  return negative_cosine(p_m, jax.lax.stop_gradient(z_f))


def mixsiam_loss(p: jax.Array, z: jax.Array, *, lam: float, aggregation: str = "max",
                 rng: Optional[jax.Array] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """L = lam L_siam + (1 - lam) L_mix (Eq. 8).

  Args:
    p: predictions [B, V, D]; views ordered (x1, x2[, x_m]).
    z: projections [B, V, D], same order.
    lam: weight of L_siam. With lam == 1 only two views are needed (SimSiam)
      and L_mix is reported as 0.
    aggregation: target of the mixed branch (see ``aggregate``).
    rng: PRNG key for aggregation='none'.

  Returns:
    (loss, {'loss_siam', 'loss_mix', 'cos_pm_zf'}); cos_pm_zf is the mean
    cosine between p_m and z_f (0 when lam == 1).
  """
  p1, p2, z1, z2 = p[:, 0], p[:, 1], z[:, 0], z[:, 1]
  loss_siam = siamese_loss(p1, p2, z1, z2)
  if lam == 1.0:
    zero = jnp.zeros((), loss_siam.dtype)
    return loss_siam, {"loss_siam": loss_siam, "loss_mix": zero, "cos_pm_zf": zero}
  if p.shape[1] < 3:
    raise ValueError(f"lam={lam} < 1 needs the mixed view: got {p.shape[1]} views, expected 3.")
  z_f = aggregate(z1, z2, aggregation, rng)
  loss_mix = mix_loss(p[:, 2], z_f)
  loss = lam * loss_siam + (1.0 - lam) * loss_mix
  return loss, {"loss_siam": loss_siam, "loss_mix": loss_mix, "cos_pm_zf": -loss_mix}
