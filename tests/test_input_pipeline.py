"""Tests of the tf.data input pipeline (folders, TFDS mock data, determinism, bad input)."""
import io
import os
from pathlib import Path
import re
import shutil
import tarfile
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mixsiam_jax import input_pipeline as ip

ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10_train_jpeg.tar.gz"
PER_CLASS = 30  # 300 real JPEGs in 10 classes.


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
  """A small PATH/<class>/<jpg> folder unpacked from the shared CIFAR-10 archive."""
  if not ARCHIVE.exists():
    pytest.skip(f"CIFAR-10 JPEG archive not found at {ARCHIVE} (expected shared/ beside the repo)")
  root = tmp_path_factory.mktemp("cifar")
  with tarfile.open(ARCHIVE) as tar:
    wanted = {f"{i:04d}.jpg" for i in range(PER_CLASS)}
    members = [m for m in tar.getmembers() if m.isfile() and os.path.basename(m.name) in wanted]
    tar.extractall(root, members=members, filter="data")
  return root / "train"


def _png(arr):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "PNG")
  return buf.getvalue()


def _pretrain(ds_name, **kw):
  args = dict(global_batch_size=16, image_size=16, seed=0, process_index=0, process_count=1)
  args.update(kw)
  return ip.create_pretrain_dataset(ds_name, "train", **args)


def _take(ds, n):
  return [b for b, _ in zip(ds.as_numpy_iterator(), range(n))]


# ----------------------------------------------------------------------- crops
def test_crop_window_area_ratio_and_bounds():
  n = 2000
  h, w = 300, 400
  windows = ip.random_resized_crop_window(tf.constant([3, 4], tf.int64), h, w, (0.2, 1.0),
                                          num=n).numpy()
  top, left, ch, cw = windows.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + ch <= h).all() and (left + cw <= w).all()
  area = ch * cw / (h * w)
  # Rounding of the sides moves the area by at most a few pixels' worth.
  assert area.min() >= 0.2 - 0.01 and area.max() <= 1.0
  ratio = cw / ch
  assert ratio.min() >= 0.75 - 0.02 and ratio.max() <= 4 / 3 + 0.02
  # Area ~ U[0.2, 1] (before the fit check): mean about 0.6 minus rejections.
  assert 0.45 < area.mean() < 0.62


def test_crop_fallback_is_center_crop_for_extreme_aspect():
  # A 10x1000 strip: no candidate fits; torchvision falls back to a centre crop
  # with the aspect ratio clamped to 4/3.
  win = ip.random_resized_crop_window(tf.constant([1, 2], tf.int64), 10, 1000, (0.9, 1.0))[0]
  top, left, ch, cw = win.numpy()
  assert (ch, cw) == (10, 13) and top == 0 and left == (1000 - 13) // 2


def test_flip_rate_and_same_eagerly_and_in_tf_data():
  image = np.tile(np.arange(16, dtype=np.uint8)[None, :, None], (16, 1, 3)) * 10
  seeds = [tf.constant([i, 5], tf.int64) for i in range(600)]
  eager = [ip.crop_flip_views(s, image, 16, (1.0, 1.0)).numpy() for s in seeds[:20]]
  ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
      lambda s: ip.crop_flip_views(s, image, 16, (1.0, 1.0)), num_parallel_calls=4)
  graph = list(ds.as_numpy_iterator())
  for a, b in zip(eager, graph[:20]):
    np.testing.assert_array_equal(a, b)
  views = np.stack(graph)  # [600, 2, 16, 16, 3]; full-image crops, so only flips differ.
  flipped = views[:, :, 0, 0, 0] > views[:, :, 0, -1, 0]
  # Binomial(1200, 0.5): sd 0.0144; 4 sd.
  assert abs(flipped.mean() - 0.5) < 0.06


def test_host_photometric_jitter_and_gray_rates():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.2, 0.8, (1500, 4, 4, 3)).astype(np.float32)
  ds = tf.data.Dataset.from_tensor_slices((x, tf.range(1500, dtype=tf.int64))).map(
      lambda im, i: ip.host_photometric_augment(tf.stack([i, 1]), im, grayscale_prob=0.0))
  y = np.stack(list(ds.as_numpy_iterator()))
  changed = np.abs(y - x).max(axis=(1, 2, 3)) > 1e-6
  assert abs(changed.mean() - 0.8) < 0.05  # sd 0.0103.
  ds = tf.data.Dataset.from_tensor_slices((x, tf.range(1500, dtype=tf.int64))).map(
      lambda im, i: ip.host_photometric_augment(tf.stack([i, 2]), im, color_jitter_prob=0.0))
  y = np.stack(list(ds.as_numpy_iterator()))
  gray = np.abs(y - y[..., :1]).max(axis=(1, 2, 3)) < 1e-6
  assert abs(gray.mean() - 0.2) < 0.05


def _blur_reference(x, sigma, radius):
  """float64 separable Gaussian with edge replication (np.pad mode='edge')."""
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  h, w = x.shape[:2]
  pad = np.pad(x.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
  rows = sum(taps[t] * pad[t:t + h] for t in range(2 * radius + 1))
  return np.clip(sum(taps[t] * rows[:, t:t + w] for t in range(2 * radius + 1)), 0, 1)


@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (7, 30), (40, 33)])
@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.0])
def test_host_blur_matches_float64_reference(shape, sigma):
  # The host blur builds banded matrices with the edge taps folded into the
  # border columns; edges (and images smaller than the kernel) are the risk.
  x = np.random.default_rng(7).uniform(0, 1, shape + (3,)).astype(np.float32)
  got = ip._gaussian_blur_tf(tf.constant(x), sigma, 6).numpy()
  np.testing.assert_allclose(got, _blur_reference(x, sigma, 6), atol=1e-6)  # float32 sums.


def test_crop_flip_views_match_tf_resize_and_flip():
  # Each view is tf.image.resize (antialiased when shrinking) of its window,
  # rounded to uint8, mirrored when its flip is drawn.
  image = np.random.default_rng(3).integers(0, 256, (60, 50, 3), dtype=np.uint8)
  seed = tf.constant([5, 6], tf.int64)
  views = ip.crop_flip_views(seed, image, 24).numpy()
  assert views.dtype == np.uint8 and views.shape == (2, 24, 24, 3)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  windows = ip.random_resized_crop_window(seeds[0], 60, 50, (0.2, 1.0), num=2).numpy()
  flips = (tf.random.stateless_uniform([2], seeds[1]) < 0.5).numpy()
  for v, (top, left, ch, cw) in enumerate(windows):
    ref = tf.image.resize(image[top:top + ch, left:left + cw], [24, 24],
                          antialias=bool(ch > 24 or cw > 24)).numpy()
    ref = np.clip(np.round(ref), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(views[v], ref[:, ::-1] if flips[v] else ref)


# ------------------------------------------------------------------- folders
def test_folder_info_and_batches(cifar_folder):
  info = ip.get_dataset_info(f"folder:{cifar_folder}", "train")
  assert info == ip.DatasetInfo(10 * PER_CLASS, 10)
  batches = _take(_pretrain(f"folder:{cifar_folder}", photometric_on_host=True), 3)
  b = batches[0]
  assert b["views"].shape == (16, 2, 16, 16, 3) and b["views"].dtype == np.uint8
  assert b["label"].dtype == np.int32 and b["index"].dtype == np.int64
  assert ((b["label"] >= 0) & (b["label"] < 10)).all()
  # Labels follow sorted class folders; index // PER_CLASS is the class here.
  np.testing.assert_array_equal(b["label"], b["index"] // PER_CLASS)
  assert not np.array_equal(b["views"][:, 0], b["views"][:, 1])


def test_determinism_and_resume(cifar_folder):
  name = f"folder:{cifar_folder}"
  run1 = _take(_pretrain(name, seed=3), 25)  # 25 * 16 > 300: crosses an epoch.
  run2 = _take(_pretrain(name, seed=3), 25)
  for a, b in zip(run1, run2):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  resumed = _take(_pretrain(name, seed=3, start_step=17), 8)
  for a, b in zip(run1[17:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = _take(_pretrain(name, seed=4), 1)
  assert not np.array_equal(other[0]["index"], run1[0]["index"])
  # One epoch (18 full batches of 16 from 300, 288 = 300 - 12 per epoch) has no repeats.
  epoch = np.concatenate([b["index"] for b in run1])[:300 // 16 * 16]
  assert len(set(epoch[:288].tolist())) == 288


def test_process_shards_disjoint_and_covering(cifar_folder):
  name = f"folder:{cifar_folder}"
  count = 4  # n_local = 75 examples per process per epoch.
  shards = []
  for p in range(count):
    ds = _pretrain(name, global_batch_size=20, process_index=p, process_count=count)
    idx = np.concatenate([b["index"] for b in _take(ds, 15)])  # 15 * 5 = 75 = one epoch.
    shards.append(set(idx.tolist()))
  assert all(len(s) == 75 for s in shards)
  union = set().union(*shards)
  assert len(union) == 300  # Disjoint (4 x 75) and covering.


def test_eval_dataset_padding_and_order(cifar_folder):
  name = f"folder:{cifar_folder}"
  seen = []
  for p in range(2):
    ds = ip.create_eval_dataset(name, "train", global_batch_size=64, image_size=32,
                                process_index=p, process_count=2)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 5  # ceil(300 / 64) on every process.
    for b in batches:
      assert b["image"].shape == (32, 32, 32, 3) and b["mask"].dtype == bool
    seen.append(batches)
  labels = [np.concatenate([seen[0][i]["label"], seen[1][i]["label"]]) for i in range(5)]
  masks = [np.concatenate([seen[0][i]["mask"], seen[1][i]["mask"]]) for i in range(5)]
  labels, masks = np.concatenate(labels), np.concatenate(masks)
  assert masks.sum() == 300 and masks[:300].all()
  np.testing.assert_array_equal(labels[:300], np.arange(300) // PER_CLASS)
  ds = ip.create_eval_dataset(name, "train", global_batch_size=10, image_size=24,
                              transform="resize_center_crop", process_index=0, process_count=1)
  assert next(ds.as_numpy_iterator())["image"].shape == (10, 24, 24, 3)


# -------------------------------------------------------------- folder splits
def _eval_images(name, split, batch=100):
  ds = ip.create_eval_dataset(name, split, global_batch_size=batch, image_size=32,
                              process_index=0, process_count=1)
  batches = list(ds.as_numpy_iterator())
  mask = np.concatenate([b["mask"] for b in batches])
  return (np.concatenate([b["image"] for b in batches])[mask],
          np.concatenate([b["label"] for b in batches])[mask])


@pytest.mark.parametrize("head,tail,n_head", [("[:20]", "[20:]", 20),
                                              ("train[:90%]", "train[90%:]", 27),
                                              ("[:-5]", "[-5:]", 25)])
def test_folder_split_complementary_slices_partition_every_class(cifar_folder, head, tail,
                                                                 n_head):
  name = f"folder:{cifar_folder}"
  assert ip.get_dataset_info(name, head) == ip.DatasetInfo(10 * n_head, 10)
  assert ip.get_dataset_info(name, tail) == ip.DatasetInfo(10 * (PER_CLASS - n_head), 10)
  full, full_labels = _eval_images(name, "all")
  first, first_labels = _eval_images(name, head)
  rest, rest_labels = _eval_images(name, tail)
  # Per-class counts are exact, and the labels keep the whole folder's numbering.
  np.testing.assert_array_equal(np.bincount(first_labels, minlength=10), [n_head] * 10)
  np.testing.assert_array_equal(np.bincount(rest_labels, minlength=10),
                                [PER_CLASS - n_head] * 10)
  # The slices are the first n_head / the remaining files of each class, in order:
  # disjoint, and together exactly the folder.
  in_head = np.arange(10 * PER_CLASS) % PER_CLASS < n_head
  np.testing.assert_array_equal(first, full[in_head])
  np.testing.assert_array_equal(rest, full[~in_head])
  np.testing.assert_array_equal(first_labels, full_labels[in_head])


def test_folder_split_in_pretraining_reads_only_its_slice(cifar_folder):
  name = f"folder:{cifar_folder}"
  held_out, _ = _eval_images(name, "[25:]")
  ds = ip.create_pretrain_dataset(name, "[25:]", global_batch_size=10, image_size=32, seed=0,
                                  crop_scale=(1.0, 1.0), process_index=0, process_count=1)
  batches = _take(ds, 5)  # One epoch of the 50 held-out files.
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [5] * 10)
  assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == list(range(50))
  # Full-image crops (only flips differ): every view is a held-out image or its mirror.
  views = np.concatenate([b["views"][:, 0] for b in batches]).astype(np.int16)
  candidates = np.concatenate([held_out, held_out[:, :, ::-1]]).astype(np.int16)
  for v in views:
    assert np.abs(candidates - v).reshape(len(candidates), -1).max(axis=1).min() <= 1


def test_folder_split_percent_rounding(tmp_path, cifar_folder):
  src = sorted((cifar_folder / "cat").iterdir())
  sizes = {"a": 5, "b": 3, "c": 7, "d": 1}
  for cls, n in sizes.items():
    (tmp_path / cls).mkdir()
    for f in src[:n]:
      shutil.copy(f, tmp_path / cls / f.name)
  labels = ip._list_folder(str(tmp_path))[1]
  # round(p * n / 100), halves to even (TFDS 'closest'): 50% of 5, 3, 7, 1 -> 2, 2, 4, 0.
  for split, counts in (("[:50%]", [2, 2, 4, 0]), ("[50%:]", [3, 1, 3, 1]),
                        ("[:33%]", [2, 1, 2, 0]), ("[33%:]", [3, 2, 5, 1]),
                        ("[10%:90%]", [4, 3, 5, 1]), ("[:4]", [4, 3, 4, 1]),
                        ("[2:4]", [2, 1, 2, 0]), ("", [5, 3, 7, 1])):
    picked = ip._split_indices(labels, split)
    np.testing.assert_array_equal(np.bincount(np.asarray(labels)[picked], minlength=4), counts,
                                  err_msg=split)
    assert ip.get_dataset_info(f"folder:{tmp_path}", split).num_examples == sum(counts)
  for p in ("13%", "50%", "67.5%"):
    a, b = ip._split_indices(labels, f"[:{p}]"), ip._split_indices(labels, f"[{p}:]")
    assert not set(a) & set(b) and sorted(set(a) | set(b)) == list(range(16))


@pytest.mark.parametrize("split", ["[10]", "test[:10", "train+test", "[a:5]", "[10:50%]",
                                   "[:4.5]", "[:150%]", "[::2]", "tr ain"])
def test_folder_split_errors_name_the_value_and_syntax(cifar_folder, split):
  name = f"folder:{cifar_folder}"
  needle = re.escape(repr(split)) + r".*Accepted: .*\[:90%\]"
  with pytest.raises(ip.DatasetError, match=needle):
    ip.get_dataset_info(name, split)
  with pytest.raises(ip.DatasetError, match=needle):
    ip.create_pretrain_dataset(name, split, global_batch_size=8, image_size=16, seed=0,
                               process_index=0, process_count=1)
  with pytest.raises(ip.DatasetError, match=needle):
    ip.create_eval_dataset(name, split, global_batch_size=8, image_size=16, process_index=0,
                           process_count=1)


def test_folder_split_selecting_nothing_is_an_error(cifar_folder):
  with pytest.raises(ip.DatasetError, match=r"'\[30:\]' selects no image"):
    ip.get_dataset_info(f"folder:{cifar_folder}", "[30:]")


@pytest.fixture
def messy_folder(tmp_path, cifar_folder):
  """Two classes with good files of every kind plus bad ones."""
  good = np.asarray(Image.open(next((cifar_folder / "cat").iterdir())).convert("RGB"))
  root = tmp_path / "messy"
  for cls in ("a", "b"):
    (root / cls).mkdir(parents=True)
    for i in range(8):
      Image.fromarray(np.roll(good, i, 0)).save(root / cls / f"{i}.jpg")
  Image.fromarray(good).convert("CMYK").save(root / "a" / "cmyk.jpg")
  Image.fromarray(good).convert("L").save(root / "a" / "gray.png")
  Image.fromarray(good).convert("RGBA").save(root / "a" / "rgba.png")
  Image.fromarray(good).save(root / "b" / "bitmap.bmp")
  Image.fromarray(good).convert("P").save(root / "b" / "anim.gif")
  data = (cifar_folder / "dog" / "0000.jpg").read_bytes()
  (root / "b" / "truncated.jpg").write_bytes(data[:len(data) // 2])
  (root / "b" / "empty.jpg").write_bytes(b"")
  (root / "b" / "notes.jpg").write_bytes(b"this is not an image")
  (root / "b" / "README.txt").write_text("hello")
  return root


def test_bad_files_skipped_and_reported(messy_folder, caplog):
  name = f"folder:{messy_folder}"
  info = ip.get_dataset_info(name, "train")
  assert info.num_classes == 2 and info.num_examples == 8 * 2 + 5 + 3
  ds = _pretrain(name, global_batch_size=8)
  batches = _take(ds, 6)  # 48 > 24 examples: every file is read.
  bad = ip.bad_images()
  for f in ("truncated.jpg", "empty.jpg", "notes.jpg", "README.txt"):
    assert any(k.endswith(f) for k in bad), f
  for f in ("cmyk.jpg", "gray.png", "rgba.png", "bitmap.bmp", "anim.gif"):
    assert not any(k.endswith(f) for k in bad), f
  bad_ids = {i for i, p in enumerate(ip._list_folder(str(messy_folder))[0])
             if p.endswith(("truncated.jpg", "empty.jpg", "notes.jpg"))}
  for b in batches:  # Bad rows were replaced by readable ones.
    assert not bad_ids & set(b["index"].tolist())
    assert b["views"].reshape(8, -1).max(axis=1).min() > 0


def test_bad_files_raise_when_not_skipping(messy_folder):
  with pytest.raises(ip.DatasetError, match="README.txt"):
    _pretrain(f"folder:{messy_folder}", global_batch_size=8, skip_bad_images=False)
  # Listings are cached per path, so strip the text file in a copy.
  copy = messy_folder.parent / "messy_images_only"
  shutil.copytree(messy_folder, copy)
  (copy / "b" / "README.txt").unlink()
  ds = _pretrain(f"folder:{copy}", global_batch_size=8, skip_bad_images=False)
  with pytest.raises(Exception, match=r"(truncated|empty|notes)\.jpg"):
    _take(ds, 6)


def test_folder_errors_are_clear_and_fast(tmp_path):
  start = time.time()
  with pytest.raises(ip.DatasetError, match="does not exist"):
    ip.get_dataset_info(f"folder:{tmp_path / 'missing'}", "train")
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  with pytest.raises(ip.DatasetError, match="holds no images"):
    ip.get_dataset_info(f"folder:{tmp_path / 'empty'}", "train")
  with pytest.raises(ip.DatasetError, match="tfds:NAME"):
    ip.get_dataset_info("cifar10", "train")
  assert time.time() - start < 5


def test_flat_folder_unlabelled(tmp_path, cifar_folder):
  for i, f in enumerate(sorted((cifar_folder / "ship").iterdir())[:20]):
    shutil.copy(f, tmp_path / f"{i}.jpg")
  assert ip.get_dataset_info(f"folder:{tmp_path}", "") == ip.DatasetInfo(20, 0)
  b = _take(_pretrain(f"folder:{tmp_path}", global_batch_size=4), 1)[0]
  assert (b["label"] == -1).all()


def test_batch_and_process_validation(cifar_folder):
  with pytest.raises(ValueError, match="global_batch_size=10"):
    _pretrain(f"folder:{cifar_folder}", global_batch_size=10, process_count=4)
  with pytest.raises(ip.DatasetError, match="too small"):
    _pretrain(f"folder:{cifar_folder}", global_batch_size=512)


# ---------------------------------------------------------------------- TFDS
@pytest.mark.parametrize("random_access", [True, False])
def test_tfds_mock_data(random_access):
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    info = ip.get_dataset_info("tfds:cifar10", "train", random_access=random_access)
    assert info == ip.DatasetInfo(40, 10)
    kw = dict(global_batch_size=8, image_size=16, seed=1, process_index=0, process_count=1,
              random_access=random_access)
    run = _take(ip.create_pretrain_dataset("tfds:cifar10", "train", **kw), 7)
    again = _take(ip.create_pretrain_dataset("tfds:cifar10", "train", start_step=4, **kw), 3)
    assert run[0]["views"].shape == (8, 2, 16, 16, 3)
    for a, b in zip(run[4:], again):
      np.testing.assert_array_equal(a["views"], b["views"])
      np.testing.assert_array_equal(a["index"], b["index"])
    epoch = np.concatenate([b["index"] for b in run[:5]])
    assert sorted(epoch.tolist()) == list(range(40))
    ev = list(ip.create_eval_dataset("tfds:cifar10", "test", global_batch_size=16,
                                     image_size=32, process_index=0, process_count=1,
                                     random_access=random_access).as_numpy_iterator())
    assert len(ev) == 3 and sum(b["mask"].sum() for b in ev) == 40


def test_tfds_errors_are_clear_and_fast(tmp_path):
  start = time.time()
  with pytest.raises(ip.DatasetError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
    ip.get_dataset_info("tfds:no_such_dataset_xyz", "train")
  with pytest.raises(ip.DatasetError, match=r"tfds build cifar10.*folder:PATH"):
    ip.get_dataset_info("tfds:cifar10", "train", data_dir=str(tmp_path))
  assert time.time() - start < 10


def test_prefetch_to_mesh_builds_global_arrays(cifar_folder):
  import jax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh()
  ds = _pretrain(f"folder:{cifar_folder}", global_batch_size=16)
  batch = next(sharding.prefetch_to_mesh(ds.as_numpy_iterator(), mesh, 2))
  assert isinstance(batch["views"], jax.Array) and batch["views"].shape == (16, 2, 16, 16, 3)
  assert batch["views"].sharding.is_equivalent_to(sharding.batch_sharded(mesh), 5)
