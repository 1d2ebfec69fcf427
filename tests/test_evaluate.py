"""kNN monitor core: toy problems with known answers, masks, sharded banks, feature extraction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mixsiam_jax import augment, evaluate, sharding


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
  scores = evaluate.knn_predict(jnp.asarray(bank, jnp.float32), jnp.asarray(labels),
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
  got = evaluate.knn_predict(bank, labels, queries, num_classes=7, k=20, temperature=0.1,
                             query_chunk=12)
  ref = numpy_knn_scores(bank.astype(np.float64), labels, queries.astype(np.float64), 7, 20, 0.1)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4)
  # k larger than the bank: every example votes.
  small = evaluate.knn_predict(bank[:5], labels[:5], queries, num_classes=7, k=200)
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
  acc = evaluate.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=10)
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
  acc = evaluate.knn_accuracy(b, bl, q, ql, num_classes=4, k=10, query_mask=qmask,
                              train_mask=bmask)
  assert acc["top1"] == 1.0
  wrong = evaluate.knn_accuracy(b, bl, queries, query_labels, num_classes=4, k=1)
  assert wrong["top1"] == 0.0 and wrong["top5"] == 1.0  # 4 classes: top-5 is top-4.
  # Fewer valid bank rows than k: the padded ones get no weight.
  scores = evaluate.knn_predict(b, bl, queries, num_classes=4, k=len(b), train_mask=bmask)
  ref = numpy_knn_scores(bank, bank_labels, queries, 4, len(bank), 0.1)
  np.testing.assert_allclose(np.asarray(scores), ref, rtol=1e-4)
  with pytest.raises(ValueError, match="query_mask is all False"):
    evaluate.knn_accuracy(b, bl, q, ql, num_classes=4, query_mask=np.zeros(len(q), bool))


def test_sharded_bank_over_8_devices_equals_unsharded():
  assert jax.device_count() == 8
  mesh = sharding.create_mesh()
  rng = np.random.default_rng(3)
  bank, bank_labels = clusters(rng, 10, 64, noise=1.0)  # 640 rows, 80 per device.
  queries, _ = clusters(rng, 10, 7, noise=1.0)
  rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
  sbank, slabels = jax.device_put(bank, rows), jax.device_put(bank_labels, rows)
  assert len(sbank.sharding.device_set) == 8
  single = evaluate.knn_predict(bank, bank_labels, queries, num_classes=10, k=50, query_chunk=16)
  ref = numpy_knn_scores(bank, bank_labels, queries, 10, 50, 0.1)
  np.testing.assert_allclose(np.asarray(single), ref, rtol=1e-4)
  for mesh_arg in (None, mesh):  # XLA's own partitioning, and the explicit two-stage top-k.
    sharded = evaluate.knn_predict(sbank, slabels, queries, num_classes=10, k=50,
                                   query_chunk=16, mesh=mesh_arg)
    # Same neighbours; only the summation order of the similarities may differ.
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5)
  # With the mesh, no device ever holds the full [chunk, N] similarity matrix.
  hlo = evaluate.knn_predict.lower(sbank, slabels, queries, num_classes=10, k=50, query_chunk=16,
                                   mesh=mesh).compile().as_text()
  assert "f32[16,640]" not in hlo and "f32[16,80]" in hlo


def test_shard_bank_pads_to_the_mesh_and_masks_the_padding():
  mesh = sharding.create_mesh()
  rng = np.random.default_rng(5)
  bank, bank_labels = clusters(rng, 5, 13, noise=1.0)  # 65 rows: 7 rows of padding.
  queries, query_labels = clusters(rng, 5, 3, noise=1.0)
  feats, labels, mask = evaluate.shard_bank(bank, bank_labels, mesh)
  assert feats.shape == (72, 32) and int(mask.sum()) == 65 and int(labels[-1]) == -1
  got = evaluate.knn_predict(feats, labels, queries, num_classes=5, k=20, train_mask=mask,
                             mesh=mesh)
  ref = numpy_knn_scores(bank, bank_labels, queries, 5, 20, 0.1)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4)
  acc = evaluate.knn_accuracy(feats, labels, queries, query_labels, num_classes=5, k=20,
                              train_mask=mask, mesh=mesh)
  assert 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
  with pytest.raises(ValueError, match="65 bank rows do not split over the 8 devices"):
    evaluate.knn_predict(bank, bank_labels, queries, num_classes=5, mesh=mesh)


def test_extract_features_normalises_and_drops_padding():
  mesh = sharding.create_mesh()
  rows = NamedSharding(mesh, P(sharding.DATA_AXIS))
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, size=(24, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(24)
  mask = np.ones(24, bool)
  mask[-5:] = False  # The last batch is padded.
  batches = [{k: jax.device_put(v[i:i + 8], rows) for k, v in
              (("image", images), ("label", labels), ("mask", mask))} for i in (0, 8, 16)]
  embed = jax.jit(lambda x: x.mean(axis=(1, 2)))
  feats, labs = evaluate.extract_features(embed, iter(batches))
  expected = np.asarray(augment.normalize(jnp.asarray(images[:19], jnp.float32) / 255.0))
  np.testing.assert_allclose(feats, expected.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(labs, labels[:19])
  with pytest.raises(ValueError, match="no batches"):
    evaluate.extract_features(embed, iter([]))


# ----------------------------------------------------------------- programs
import json  # noqa: E402
import shutil  # noqa: E402

from configs import knn as knn_config  # noqa: E402
from configs import linear_probe as probe_config  # noqa: E402
from mixsiam_jax import checkpoint, input_pipeline, workdir as workdir_lib  # noqa: E402


def _snapshot(directory):
  return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _eval_config(module, folder, pretrained, **overrides):
  config = module.get_config()
  config.pretrained = str(pretrained)
  config.dataset = config.eval_dataset = f"folder:{folder}"
  config.image_size = 16
  config.eval_batch_size = 40
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


@pytest.mark.slow
def test_pretraining_logged_the_knn_monitor(tiny_pretrained):
  rows = workdir_lib.read_metrics(str(tiny_pretrained))
  final = [r for r in rows if "knn_top1" in r]
  assert [r["step"] for r in final] == [6]  # eval_every_steps=0: only at the end
  assert 0.0 <= final[0]["knn_top1"] <= final[0]["knn_top5"] <= 100.0


@pytest.mark.slow
def test_knn_and_linear_probe_programs_leave_the_pretraining_run_untouched(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  before = _snapshot(tiny_pretrained)
  knn = evaluate.run_knn(_eval_config(knn_config, cifar_jpeg_folder, tiny_pretrained,
                                      **{"knn.k": 10}), str(tmp_path / "knn"))
  assert knn["pretrained_step"] == 6 and 0 <= knn["knn_top1"] <= knn["knn_top5"] <= 100
  assert json.loads((tmp_path / "knn" / "results.json").read_text())["knn_top1"] == knn["knn_top1"]

  config = _eval_config(probe_config, cifar_jpeg_folder, tiny_pretrained, batch_size=40,
                        num_train_steps=6, log_every_steps=3, checkpoint_every_steps=3)
  probe_dir = tmp_path / "probe"
  probe = evaluate.run_linear_probe(config, str(probe_dir))
  assert probe["probe_steps"] == 6 and 0 <= probe["probe_top1"] <= probe["probe_top5"] <= 100
  assert sorted(p.name for p in (probe_dir / "checkpoints").iterdir()) == ["3", "6"]
  rows = workdir_lib.read_metrics(str(probe_dir))
  assert [r["step"] for r in rows] == [3, 6] and "probe_top1" in rows[-1]
  # Resume: the finished probe restores its classifier and gives the same numbers.
  assert evaluate.run_linear_probe(config, str(probe_dir))["probe_top1"] == probe["probe_top1"]
  assert _snapshot(tiny_pretrained) == before


@pytest.mark.slow
def test_knn_program_with_a_missing_data_folder_writes_nothing(tiny_pretrained, tmp_path):
  missing = tmp_path / "no_such_folder"
  config = _eval_config(knn_config, str(missing), tiny_pretrained)
  with pytest.raises(input_pipeline.DatasetError, match="no_such_folder.*does not exist"):
    evaluate.run_knn(config, str(tmp_path / "knn"))
  assert not (tmp_path / "knn").exists()


@pytest.mark.slow
def test_probe_restores_a_checkpoint_written_on_eight_devices_onto_one(tiny_pretrained):
  mesh = sharding.create_mesh(jax.devices()[:1])
  tree, meta, step = checkpoint.restore_replicated(str(tiny_pretrained), mesh)
  assert step == 6 and meta["model"]["width"] == 8
  leaf = jax.tree.leaves(tree["params"])[0]
  assert leaf.sharding.device_set == {jax.devices()[0]}


def test_bad_pretrained_paths_are_named(tmp_path):
  mesh = sharding.create_mesh()
  with pytest.raises(checkpoint.CheckpointError, match="pretrained is empty"):
    checkpoint.restore_replicated("", mesh)
  with pytest.raises(checkpoint.CheckpointError, match=f"pretrained={tmp_path}/missing does not exist"):
    checkpoint.restore_replicated(str(tmp_path / "missing"), mesh)
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="holds no checkpoints/ directory"):
    checkpoint.restore_replicated(str(tmp_path / "empty"), mesh)
  (tmp_path / "nockpt" / "checkpoints").mkdir(parents=True)
  with pytest.raises(checkpoint.CheckpointError, match="holds no complete checkpoint"):
    checkpoint.restore_replicated(str(tmp_path / "nockpt"), mesh)


@pytest.mark.slow
def test_truncated_checkpoint_is_reported_with_its_path(tiny_pretrained, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(tiny_pretrained, broken)
  for path in (broken / "checkpoints" / "6" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 100:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint .*checkpoints/6"):
    checkpoint.restore_replicated(str(broken), sharding.create_mesh())


@pytest.mark.slow
def test_exported_weights_evaluate_like_the_workdir(tiny_pretrained, cifar_jpeg_folder, tmp_path):
  from mixsiam_jax import weights  # pylint: disable=g-import-not-at-top
  exported = tmp_path / "tiny.npz"
  weights.main(["export", f"--workdir={tiny_pretrained}", f"--out={exported}"])
  assert "module.encoder.layer1.0.conv1.weight" in np.load(exported).files
  from_workdir = evaluate.run_knn(
      _eval_config(knn_config, cifar_jpeg_folder, tiny_pretrained, **{"knn.k": 10}),
      str(tmp_path / "a"))
  from_file = evaluate.run_knn(
      _eval_config(knn_config, cifar_jpeg_folder, exported, **{
          "knn.k": 10, "pretrained_model.depth": 18, "pretrained_model.width": 8,
          "pretrained_model.stem": "cifar"}), str(tmp_path / "b"))
  assert from_file["knn_top1"] == from_workdir["knn_top1"]
  assert from_file["knn_top5"] == from_workdir["knn_top5"]
  with pytest.raises(ValueError, match="depth"):
    evaluate.run_knn(_eval_config(knn_config, cifar_jpeg_folder, exported, **{
        "pretrained_model.depth": 34, "pretrained_model.width": 8,
        "pretrained_model.stem": "cifar"}), str(tmp_path / "c"))
