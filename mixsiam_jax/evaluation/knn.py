"""The sharded weighted-kNN classifier of the SimSiam-family monitors.

Wu et al. 2018 ("InstDist"); the ``knn_predict`` of the widely used SimSiam/MoCo
CIFAR notebooks: features are l2-normalised, the k most cosine-similar training
examples vote for their class with weight exp(similarity / temperature), and the
class scores are the summed weights. evaluators.KnnMonitor runs it on an
encoder's features; knn_program.py is the kNN program.
"""
import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixsiam_jax import losses
from mixsiam_jax.sharding import DATA_AXIS

# Default kNN temperature. 0.1 is what InstDist and the SimSiam-family kNN
# monitors use (Wu et al. 2018; the MoCo/SimSiam CIFAR demo's knn_t=0.1): cosine
# similarities lie in [-1, 1], so exp(sim / 0.1) spans e^20 and the closest
# neighbours dominate the vote while the other k - 1 still break ties. Much
# lower temperatures reduce it to 1-NN; much higher ones to an unweighted vote.
DEFAULT_TEMPERATURE = 0.1
DEFAULT_K = 200


def _local_top_k(queries: jax.Array, bank: jax.Array, bank_labels: jax.Array,
                 bank_valid: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
  """Top-k cosine similarities [q, k] of normalised queries in a bank, and their labels."""
  sim = jnp.einsum("qf,nf->qn", queries, bank, precision=jax.lax.Precision.HIGHEST)
  # Padded bank rows can never be neighbours; if fewer than k rows are valid
  # they are picked last and then carry weight exp(-inf) = 0.
  sim = jnp.where(bank_valid[None, :], sim, -jnp.inf)
  top_sim, top_idx = jax.lax.top_k(sim, k)
  return top_sim, bank_labels[top_idx]


def _chunk_scores(queries: jax.Array, bank: jax.Array, bank_labels: jax.Array,
                  bank_valid: jax.Array, num_classes: int, k: int, temperature: jax.Array,
                  mesh: Optional[Mesh]) -> jax.Array:
  """Class scores [chunk, num_classes] of one chunk of normalised queries."""
  if mesh is None:
    top_sim, top_labels = _local_top_k(queries, bank, bank_labels, bank_valid, k)
  else:
    # Two-stage global top-k: each device keeps the k best of its bank shard,
    # then the k best of the [chunk, devices * k] candidates are taken. A plain
    # top_k on a sharded axis makes XLA gather all of [chunk, N] on every device.
    local_k = min(k, bank.shape[0] // mesh.size)
    local = jax.shard_map(
        functools.partial(_local_top_k, k=local_k), mesh=mesh,
        in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
        out_specs=(P(None, DATA_AXIS), P(None, DATA_AXIS)))
    cand_sim, cand_labels = local(queries, bank, bank_labels, bank_valid)
    top_sim, pos = jax.lax.top_k(cand_sim, k)
    top_labels = jnp.take_along_axis(cand_labels, pos, axis=1)
  weights = jnp.exp(top_sim / temperature)
  # Labels outside [0, num_classes) (e.g. -1 for padding) one-hot to zeros.
  votes = jax.nn.one_hot(top_labels, num_classes, dtype=jnp.float32) * weights[..., None]
  return votes.sum(axis=1)


def _check_bank(num_train: int, mesh: Optional[Mesh]) -> None:
  if num_train == 0:
    raise ValueError("knn_predict: the training bank is empty; check the training split.")
  if mesh is not None and num_train % mesh.size:
    raise ValueError(f"knn_predict: {num_train} bank rows do not split over the {mesh.size} "
                     "devices of the mesh; pad the bank with shard_bank() (which also returns "
                     "the train_mask), or pass mesh=None.")


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "query_chunk", "mesh"))
def knn_predict(train_features: jax.Array, train_labels: jax.Array, query_features: jax.Array,
                *, num_classes: int, k: int = DEFAULT_K,
                temperature: float = DEFAULT_TEMPERATURE, query_chunk: int = 256,
                train_mask: Optional[jax.Array] = None,
                mesh: Optional[Mesh] = None) -> jax.Array:
  """Weighted kNN class scores of each query against a bank of training features.

  Features need not be normalised (this function does it). Memory is bounded
  by processing ``query_chunk`` queries at a time: the similarity matrix held
  at once is [query_chunk, N] (or [query_chunk, N / devices] per device with
  ``mesh``).

  Args:
    train_features: bank [N, F]; with ``mesh``, best passed sharded on its
      first axis over the mesh's 'data' axis (see shard_bank).
    train_labels: int labels [N].
    query_features: [Nq, F].
    num_classes: number of classes C.
    k: neighbours per query; capped at N.
    temperature: votes weigh exp(cosine / temperature). Default 0.1, as in the
      InstDist and SimSiam-family kNN monitors, so numbers compare with
      theirs: it makes the closest neighbours dominate the vote (a cosine
      gap of 0.1 is a factor e) while the rest of the k still break ties.
    query_chunk: queries per step of the sequential loop.
    train_mask: optional bool [N]; False rows (padding) are never neighbours.
    mesh: optional 1-D 'data' mesh; the bank is then processed shard by shard
      (N must be a multiple of the mesh size) with an exact global top-k.
      Without it the result is the same, but XLA may gather [query_chunk, N]
      similarities on every device.

  Returns:
    Scores [Nq, C] (float32): per class, the summed weights of the neighbours
    of that class.

  Raises:
    ValueError: for an empty bank, or one that does not split over ``mesh``.
  """
  num_train = train_features.shape[0]
  num_queries = query_features.shape[0]
  _check_bank(num_train, mesh)
  k = min(k, num_train)
  if train_mask is None:
    train_mask = jnp.ones((num_train,), bool)
  # float32 before normalising: bfloat16 features would lose the cosine's precision.
  bank = losses.l2_normalize(train_features.astype(jnp.float32))
  queries = losses.l2_normalize(query_features.astype(jnp.float32))
  chunk = max(1, min(query_chunk, num_queries))
  padded = -(-num_queries // chunk) * chunk
  queries = jnp.pad(queries, ((0, padded - num_queries), (0, 0)))
  queries = queries.reshape(padded // chunk, chunk, queries.shape[-1])
  score_fn = functools.partial(
      _chunk_scores, bank=bank, bank_labels=train_labels.astype(jnp.int32),
      bank_valid=train_mask.astype(bool), num_classes=num_classes, k=k,
      temperature=jnp.asarray(temperature, jnp.float32), mesh=mesh)
  scores = jax.lax.map(score_fn, queries)
  return scores.reshape(padded, num_classes)[:num_queries]


def shard_bank(features: Any, labels: Any, mesh: Mesh
               ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Pads a host feature bank to a multiple of the mesh size and shards it by rows.

  Args:
    features: [N, F] on the host (the same full bank on every process).
    labels: int [N].
    mesh: 1-D mesh with a 'data' axis.

  Returns:
    (features [N', F], labels [N'], train_mask [N']) as jax.Arrays sharded on
    their first axis, N' = N rounded up to a multiple of mesh.size; padded rows
    have mask False and label -1.
  """
  features, labels = np.asarray(features, np.float32), np.asarray(labels, np.int32)
  pad = -len(features) % mesh.size
  mask = np.concatenate([np.ones(len(features), bool), np.zeros(pad, bool)])
  features = np.concatenate([features, np.zeros((pad,) + features.shape[1:], np.float32)])
  labels = np.concatenate([labels, np.full(pad, -1, np.int32)])
  rows = NamedSharding(mesh, P(DATA_AXIS))
  # Every process holds the whole bank: each device takes its own rows from it.
  place = lambda x: jax.make_array_from_callback(x.shape, rows, lambda idx: x[idx])
  return place(features), place(labels), place(mask)


def knn_accuracy(train_features: Any, train_labels: Any, query_features: Any, query_labels: Any,
                 *, num_classes: int, k: int = DEFAULT_K,
                 temperature: float = DEFAULT_TEMPERATURE, query_chunk: int = 256,
                 query_mask: Optional[Any] = None, train_mask: Optional[Any] = None,
                 mesh: Optional[Mesh] = None) -> Dict[str, float]:
  """Top-1 and top-5 accuracy of the weighted kNN classifier.

  Args:
    train_features, train_labels: the bank [N, F] and its int labels [N].
    query_features, query_labels: the evaluated examples [Nq, F], [Nq].
    num_classes, k, temperature, query_chunk, mesh: as in knn_predict.
    query_mask: optional bool [Nq]; False rows (padding) are not counted.
    train_mask: optional bool [N]; False rows are never neighbours.

  Returns:
    {'top1': float, 'top5': float}, fractions in [0, 1] of the unmasked
    queries (top-5 is top-C when there are fewer than 5 classes).

  Raises:
    ValueError: if no query is unmasked.
  """
  scores = knn_predict(train_features, train_labels, query_features, num_classes=num_classes,
                       k=k, temperature=temperature, query_chunk=query_chunk,
                       train_mask=train_mask, mesh=mesh)
  labels = jnp.asarray(query_labels).astype(jnp.int32)
  mask = (jnp.ones(labels.shape, bool) if query_mask is None
          else jnp.asarray(query_mask).astype(bool))
  top1, top5, count = _accuracy_counts(scores, labels, mask)
  count = int(count)
  if count == 0:
    raise ValueError("knn_accuracy: every query is masked out (query_mask is all False); "
                     "there is nothing to evaluate.")
  return {"top1": float(top1) / count, "top5": float(top5) / count}


@jax.jit
def _accuracy_counts(scores: jax.Array, labels: jax.Array, mask: jax.Array):
  """(#top-1 hits, #top-5 hits, #counted) over the unmasked rows."""
  _, top = jax.lax.top_k(scores, min(5, scores.shape[-1]))
  hits = top == labels[:, None]
  return (jnp.sum(hits[:, 0] & mask), jnp.sum(jnp.any(hits, axis=1) & mask), jnp.sum(mask))
