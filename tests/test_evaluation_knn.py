"""evaluation/knn.py: the kNN math on toy problems with known answers (NumPy float64 reference)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mixsiam_jax import sharding
from mixsiam_jax.evaluation import knn


def numpy_knn_scores(bank, bank_labels, queries, num_classes, k, temperature):
  """Reference: the SimSiam-notebook knn_predict, written out in NumPy (float64)."""
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  sim = queries @ bank.T
  idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
  scores = np.zeros((len(queries), num_classes))
  for q in range(len(queries)):
    for j in idx[q]:
      scores[q, bank_labels[j]] += np.exp(sim[q, j] / temperature)
  return scores


def test_hand_computed_vote_weights_k3():
  # 2-D bank; angles make the cosines easy to read off.
  angles = np.array([0.0, 0.1, 0.3, 1.2, 1.4, np.pi])
  bank = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([[1], [2], [3], [1], [5], [1]])
  labels = np.array([0, 1, 1, 2, 2, 0])
  query = np.array([[3.0, 0.0]])  # angle 0: nearest are angles 0, 0.1, 0.3.
  scores = knn.knn_predict(jnp.asarray(bank, jnp.float32), jnp.asarray(labels),
                           jnp.asarray(query, jnp.float32), num_classes=3, k=3,
                           temperature=0.5)
  expected = np.array([[np.exp(1.0 / 0.5), np.exp(np.cos(0.1) / 0.5) + np.exp(np.cos(0.3) / 0.5),
                        0.0]])
  np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-5)
  np.testing.assert_allclose(expected, numpy_knn_scores(bank, labels, query, 3, 3, 0.5),
                             rtol=1e-12)


def test_matches_numpy_reference_with_chunking():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(300, 16)).astype(np.float32)
  labels = rng.integers(0, 7, size=300)
  queries = rng.normal(size=(45, 16)).astype(np.float32)  # 45 = 4 chunks of 12, last padded.
  got = knn.knn_predict(bank, labels, queries, num_classes=7, k=20, temperature=0.1,
                        query_chunk=12)
  ref = numpy_knn_scores(bank.astype(np.float64), labels, queries.astype(np.float64), 7, 20, 0.1)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4)
  # k larger than the bank: every example votes.
  small = knn.knn_predict(bank[:5], labels[:5], queries, num_classes=7, k=200)
  np.testing.assert_allclose(np.asarray(small),
                             numpy_knn_scores(bank[:5], labels[:5], queries, 7, 5, 0.1), rtol=1e-4)


def clusters(rng, num_classes, per_class, dim=32, noise=0.1):
  """Bank and query points around the same random class centres (fixed by a seed)."""
  centres = np.random.default_rng(100).normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), per_class)
  feats = centres[labels] + noise * rng.normal(size=(len(labels), dim))
  return feats.astype(np.float32), labels


def test_well_separated_clusters_are_classified_perfectly():
  rng = np.random.default_rng(1)
  bank, bank_labels = clusters(rng, 10, 40)
  queries, query_labels = clusters(rng, 10, 5)
  # Default k=200 exceeds each cluster's 40: the temperature weighting still wins.
  acc = knn.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=10)
  assert acc == {"top1": 1.0, "top5": 1.0}


def test_masks_ignore_padded_queries_and_bank_rows():
  rng = np.random.default_rng(2)
  bank, bank_labels = clusters(rng, 4, 16)
  queries, query_labels = clusters(rng, 4, 4)
  # Padded queries with wrong labels: ignored by the query mask.
  q = np.concatenate([queries, np.zeros((8, 32), np.float32)])
  ql = np.concatenate([query_labels, np.full(8, 3)])
  qmask = np.arange(len(q)) < len(queries)
  # Padded bank rows that sit exactly on the queries with a wrong label: never neighbours.
  b = np.concatenate([bank, queries])
  bl = np.concatenate([bank_labels, (query_labels + 1) % 4])
  bmask = np.arange(len(b)) < len(bank)
  acc = knn.knn_accuracy(b, bl, q, ql, num_classes=4, k=10, query_mask=qmask,
                         train_mask=bmask)
  assert acc["top1"] == 1.0
  wrong = knn.knn_accuracy(b, bl, queries, query_labels, num_classes=4, k=1)
  assert wrong["top1"] == 0.0 and wrong["top5"] == 1.0  # 4 classes: top-5 is top-4.
  # Fewer valid bank rows than k: the padded ones get no weight.
  scores = knn.knn_predict(b, bl, queries, num_classes=4, k=len(b), train_mask=bmask)
  ref = numpy_knn_scores(bank, bank_labels, queries, 4, len(bank), 0.1)
  np.testing.assert_allclose(np.asarray(scores), ref, rtol=1e-4)
  with pytest.raises(ValueError, match="query_mask is all False"):
    knn.knn_accuracy(b, bl, q, ql, num_classes=4, query_mask=np.zeros(len(q), bool))


def test_sharded_bank_over_8_devices_equals_unsharded():
  assert jax.device_count() == 8
  mesh = sharding.create_mesh()
  rng = np.random.default_rng(3)
  bank, bank_labels = clusters(rng, 10, 64, noise=1.0)  # 640 rows, 80 per device.
  queries, _ = clusters(rng, 10, 7, noise=1.0)
  rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
  sbank, slabels = jax.device_put(bank, rows), jax.device_put(bank_labels, rows)
  assert len(sbank.sharding.device_set) == 8
  single = knn.knn_predict(bank, bank_labels, queries, num_classes=10, k=50, query_chunk=16)
  ref = numpy_knn_scores(bank, bank_labels, queries, 10, 50, 0.1)
  np.testing.assert_allclose(np.asarray(single), ref, rtol=1e-4)
  for mesh_arg in (None, mesh):  # XLA's own partitioning, and the explicit two-stage top-k.
    sharded = knn.knn_predict(sbank, slabels, queries, num_classes=10, k=50,
                              query_chunk=16, mesh=mesh_arg)
    # Same neighbours; only the summation order of the similarities may differ.
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5)
  # With the mesh, no device ever holds the full [chunk, N] similarity matrix.
  hlo = knn.knn_predict.lower(sbank, slabels, queries, num_classes=10, k=50, query_chunk=16,
                                   mesh=mesh).compile().as_text()
  assert "f32[16,640]" not in hlo and "f32[16,80]" in hlo


def test_shard_bank_pads_to_the_mesh_and_masks_the_padding():
  mesh = sharding.create_mesh()
  rng = np.random.default_rng(5)
  bank, bank_labels = clusters(rng, 5, 13, noise=1.0)  # 65 rows: 7 rows of padding.
  queries, query_labels = clusters(rng, 5, 3, noise=1.0)
  feats, labels, mask = knn.shard_bank(bank, bank_labels, mesh)
  assert feats.shape == (72, 32) and int(mask.sum()) == 65 and int(labels[-1]) == -1
  got = knn.knn_predict(feats, labels, queries, num_classes=5, k=20, train_mask=mask,
                        mesh=mesh)
  ref = numpy_knn_scores(bank, bank_labels, queries, 5, 20, 0.1)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4)
  acc = knn.knn_accuracy(feats, labels, queries, query_labels, num_classes=5, k=20,
                         train_mask=mask, mesh=mesh)
  assert 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
  with pytest.raises(ValueError, match="65 bank rows do not split over the 8 devices"):
    knn.knn_predict(bank, bank_labels, queries, num_classes=5, mesh=mesh)


# ----------------------------------------------------------------- monitor and program
