"""Tests of mixsiam_jax/data/pipeline.py: training and evaluation streams."""
import os
import shutil
import subprocess
import sys
import threading

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mixsiam_jax import sharding
from mixsiam_jax.data import DatasetError, batch_format, decode, folders, iterate, pipeline, sources
from mixsiam_jax.evaluation import features
from mixsiam_jax.options.checks import OptionsError
from mixsiam_jax.options.training import PhotometricOptions

PER_CLASS = 20  # conftest's cifar_jpeg_folder: 200 real JPEGs in 10 classes.


def _simsiam_photometric(**changes):
  """SimSiam's colour ops (configs/cifar10.py's values) with ``changes``."""
  fields = dict(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8, grayscale_prob=0.2,
                blur_prob=0.0, blur_sigma=(0.1, 2.0))
  return PhotometricOptions(**{**fields, **changes})


def _options(dataset, **kw):
  args = dict(dataset=dataset, split="train", global_batch_size=16, image_size=16, seed=0,
              crop_scale=(0.2, 1.0), skip_bad_images=True)
  args.update(kw)
  return pipeline.TrainDataOptions(**args)


def _pretrain(dataset, start_step=0, process_index=0, process_count=1, bad_images=None, **kw):
  return pipeline.create_pretrain_dataset(_options(dataset, **kw), start_step=start_step,
                                          process_index=process_index,
                                          process_count=process_count, bad_images=bad_images)


def _take(ds, n):
  return [b for b, _ in zip(ds.as_numpy_iterator(), range(n))]


def _eval(dataset, split, batch=100, **kw):
  args = dict(global_batch_size=batch, image_size=32, process_index=0, process_count=1)
  args.update(kw)
  return pipeline.create_eval_dataset(dataset, split, **args)


def test_importing_the_data_package_leaves_tensorflow_devices_alone():
  code = ("import tensorflow as tf\n"
          "calls = []\n"
          "tf.config.set_visible_devices = lambda *a, **k: calls.append(a)\n"
          "from mixsiam_jax.data import (batch_format, decode, folders, host_augment, pipeline,\n"
          "                              positions, sources)\n"
          "assert not calls, calls\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]


def test_hide_accelerators_hides_visible_gpus_once(monkeypatch):
  visible, calls = ["GPU:0"], []

  def set_visible(devices, kind):
    calls.append((devices, kind))
    visible.clear()

  monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind: list(visible))
  monkeypatch.setattr(tf.config, "set_visible_devices", set_visible)
  pipeline.hide_accelerators_from_tensorflow()
  pipeline.hide_accelerators_from_tensorflow()  # Nothing left to hide: no second call.
  assert calls == [([], "GPU")]


def test_options_are_checked_when_built(cifar_jpeg_folder):
  name = f"folder:{cifar_jpeg_folder}"
  with pytest.raises(OptionsError, match=r"data.crop_scale=\(0.5, 0.2\)"):
    _options(name, crop_scale=(0.5, 0.2))
  with pytest.raises(OptionsError, match="global_batch_size=0"):
    _options(name, global_batch_size=0)
  with pytest.raises(OptionsError, match="image_size=True"):
    _options(name, image_size=True)
  with pytest.raises(DatasetError, match="^eval_dataset='cifar10' must be"):
    _options("cifar10", field="eval_dataset")
  with pytest.raises(DatasetError, match=r"'\[10\]'.*Accepted"):
    _options(name, split="[10]")
  with pytest.raises(OptionsError, match="num_views=3"):
    _options(name, num_views=3)
  for prefetch in (0, -2):
    with pytest.raises(OptionsError, match=f"host_prefetch_batches={prefetch}"):
      _options(name, host_prefetch_batches=prefetch)
  assert _options(name, host_prefetch_batches=3).host_prefetch_batches == 3
  assert _options(name).host_prefetch_batches == tf.data.AUTOTUNE
  with pytest.raises(TypeError):  # Keyword-only: no positional mix-ups.
    pipeline.TrainDataOptions(name, "train", 16, 16)  # pylint: disable=too-many-function-args
  assert _options(name, crop_scale=[1, 1]).crop_scale == (1.0, 1.0)


def test_folder_batches(cifar_jpeg_folder):
  host = _simsiam_photometric(blur_prob=0.5)
  b = _take(_pretrain(f"folder:{cifar_jpeg_folder}", host_photometric=host), 3)[0]
  assert b["views"].shape == (16, 2, 16, 16, 3) and b["views"].dtype == np.uint8
  assert b["label"].dtype == np.int32 and b["index"].dtype == np.int64
  assert ((b["label"] >= 0) & (b["label"] < 10)).all()
  # Labels follow sorted class folders; index // PER_CLASS is the class here.
  np.testing.assert_array_equal(b["label"], b["index"] // PER_CLASS)
  assert not np.array_equal(b["views"][:, 0], b["views"][:, 1])


@pytest.mark.parametrize("num_views,host,canvas", [(2, False, 0), (1, False, 0), (2, True, 0),
                                                   (2, False, 32), (1, False, 32)])
def test_batches_are_exactly_in_the_batch_format(tmp_path, num_views, host, canvas):
  # A tiny folder of 2 classes x 3 JPEGs of assorted sizes: 4 rows per batch.
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    (tmp_path / name).mkdir()
    for i in range(3):
      pixels = rng.integers(0, 256, (20 + 3 * i, 24 - 2 * i, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(tmp_path / name / f"{i}.jpg")
  ds = _pretrain(f"folder:{tmp_path}", global_batch_size=4, image_size=8, num_views=num_views,
                 host_photometric=_simsiam_photometric() if host else None, canvas_size=canvas)
  want = batch_format.pretrain_batch_format(4, 8, num_views, canvas)
  # Static shapes and dtypes of the stream, and those of a batch it yields.
  assert {k: (tuple(spec.shape.as_list()), np.dtype(spec.dtype.as_numpy_dtype))
          for k, spec in ds.element_spec.items()} == want
  for batch in _take(ds, 2):
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == want


@pytest.mark.parametrize("canvas", [0, 32])
def test_determinism_and_resume(cifar_jpeg_folder, canvas):
  name = f"folder:{cifar_jpeg_folder}"
  run1 = _take(_pretrain(name, seed=3, canvas_size=canvas), 25)  # 25 * 16 > 200: crosses epochs.
  run2 = _take(_pretrain(name, seed=3, canvas_size=canvas), 25)
  for a, b in zip(run1, run2):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  resumed = _take(_pretrain(name, seed=3, start_step=17, canvas_size=canvas), 8)
  for a, b in zip(run1[17:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  other = _take(_pretrain(name, seed=4), 1)
  assert not np.array_equal(other[0]["index"], run1[0]["index"])
  # The first 192 positions (12 full batches of 16) lie in epoch 0: no repeats.
  epoch = np.concatenate([b["index"] for b in run1])[:200 // 16 * 16]
  assert len(set(epoch.tolist())) == 192


def test_one_view_is_the_first_of_the_two(cifar_jpeg_folder):
  # The augmented linear probe crops one view: the same as view 0 of pretraining's pair.
  name = f"folder:{cifar_jpeg_folder}"
  host = _simsiam_photometric()
  two = _take(_pretrain(name, seed=2, host_photometric=host), 2)
  one = _take(_pretrain(name, seed=2, host_photometric=host, num_views=1), 2)
  for a, b in zip(two, one):
    assert b["views"].shape == (16, 1, 16, 16, 3)
    np.testing.assert_array_equal(a["views"][:, :1], b["views"])
    np.testing.assert_array_equal(a["index"], b["index"])


def test_process_shards_disjoint_and_covering(cifar_jpeg_folder):
  name = f"folder:{cifar_jpeg_folder}"
  count = 4  # 50 examples per process per epoch.
  shards = []
  for p in range(count):
    ds = _pretrain(name, global_batch_size=20, process_index=p, process_count=count)
    idx = np.concatenate([b["index"] for b in _take(ds, 10)])  # 10 * 5 = 50 = one epoch.
    shards.append(set(idx.tolist()))
  assert all(len(s) == 50 for s in shards)
  assert len(set().union(*shards)) == 200  # Disjoint (4 x 50) and covering.


def test_eval_dataset_padding_and_order(cifar_jpeg_folder):
  name = f"folder:{cifar_jpeg_folder}"
  seen = []
  for p in range(2):
    batches = list(_eval(name, "train", batch=64, process_index=p,
                         process_count=2).as_numpy_iterator())
    assert len(batches) == 4  # ceil(200 / 64) on every process.
    for b in batches:
      assert b["image"].shape == (32, 32, 32, 3) and b["mask"].dtype == bool
    seen.append(batches)
  labels = np.concatenate([np.concatenate([seen[0][i]["label"], seen[1][i]["label"]])
                           for i in range(4)])
  masks = np.concatenate([np.concatenate([seen[0][i]["mask"], seen[1][i]["mask"]])
                          for i in range(4)])
  assert masks.sum() == 200 and masks[:200].all()
  np.testing.assert_array_equal(labels[:200], np.arange(200) // PER_CLASS)
  ds = _eval(name, "train", batch=10, image_size=24, transform="resize_center_crop")
  assert next(ds.as_numpy_iterator())["image"].shape == (10, 24, 24, 3)
  with pytest.raises(OptionsError, match="data.eval_transform='crop'"):
    _eval(name, "train", transform="crop")


def _eval_images(name, split):
  batches = list(_eval(name, split).as_numpy_iterator())
  mask = np.concatenate([b["mask"] for b in batches])
  return (np.concatenate([b["image"] for b in batches])[mask],
          np.concatenate([b["label"] for b in batches])[mask])


@pytest.mark.parametrize("head,tail,n_head", [("[:15]", "[15:]", 15),
                                              ("train[:90%]", "train[90%:]", 18),
                                              ("[:-5]", "[-5:]", 15)])
def test_folder_split_complementary_slices_partition_every_class(cifar_jpeg_folder, head, tail,
                                                                 n_head):
  name = f"folder:{cifar_jpeg_folder}"
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


def test_folder_split_in_pretraining_reads_only_its_slice(cifar_jpeg_folder):
  name = f"folder:{cifar_jpeg_folder}"
  held_out, _ = _eval_images(name, "[15:]")
  batches = _take(_pretrain(name, split="[15:]", global_batch_size=10, image_size=32,
                            crop_scale=(1.0, 1.0)), 5)  # One epoch of the 50 held-out files.
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [5] * 10)
  assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == list(range(50))
  # Full-image crops (only flips differ): every view is a held-out image or its mirror.
  views = np.concatenate([b["views"][:, 0] for b in batches]).astype(np.int16)
  candidates = np.concatenate([held_out, held_out[:, :, ::-1]]).astype(np.int16)
  for v in views:
    assert np.abs(candidates - v).reshape(len(candidates), -1).max(axis=1).min() <= 1


@pytest.fixture
def messy_folder(tmp_path, cifar_jpeg_folder):
  """Two classes with good files of every kind plus bad ones."""
  good = np.asarray(Image.open(next((cifar_jpeg_folder / "cat").iterdir())).convert("RGB"))
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
  data = (cifar_jpeg_folder / "dog" / "0000.jpg").read_bytes()
  (root / "b" / "truncated.jpg").write_bytes(data[:len(data) // 2])
  (root / "b" / "empty.jpg").write_bytes(b"")
  (root / "b" / "notes.jpg").write_bytes(b"this is not an image")
  (root / "b" / "README.txt").write_text("hello")
  return root


@pytest.mark.parametrize("canvas", [0, 24])
def test_bad_files_skipped_and_reported(messy_folder, canvas):
  name = f"folder:{messy_folder}"
  source = sources.open_source(name, "train")
  assert source.info.num_classes == 2 and source.info.num_examples == 8 * 2 + 5 + 3
  log = decode.BadImageLog()
  batches = _take(_pretrain(name, global_batch_size=8, bad_images=log, canvas_size=canvas),
                  6)  # Reads every file.
  bad = log.snapshot()
  for f in ("truncated.jpg", "empty.jpg", "notes.jpg", "README.txt"):
    assert any(k.endswith(f) for k in bad), f
  for f in ("cmyk.jpg", "gray.png", "rgba.png", "bitmap.bmp", "anim.gif"):
    assert not any(k.endswith(f) for k in bad), f
  bad_ids = {i for i, p in enumerate(folders.list_folder(str(messy_folder)).paths)
             if p.endswith(("truncated.jpg", "empty.jpg", "notes.jpg"))}
  for b in batches:  # Bad rows were replaced by readable ones.
    assert not bad_ids & set(b["index"].tolist())
    assert b["canvas" if canvas else "views"].reshape(8, -1).max(axis=1).min() > 0


def test_bad_files_raise_when_not_skipping(messy_folder):
  with pytest.raises(DatasetError, match="README.txt"):
    _pretrain(f"folder:{messy_folder}", global_batch_size=8, skip_bad_images=False)
  (messy_folder / "b" / "README.txt").unlink()  # Listed anew: no stale listing.
  ds = _pretrain(f"folder:{messy_folder}", global_batch_size=8, skip_bad_images=False)
  with pytest.raises(Exception, match=r"(truncated|empty|notes)\.jpg"):
    _take(ds, 6)


def test_flat_folder_unlabelled(tmp_path, cifar_jpeg_folder):
  for i, f in enumerate(sorted((cifar_jpeg_folder / "ship").iterdir())[:20]):
    shutil.copy(f, tmp_path / f"{i}.jpg")
  assert sources.get_dataset_info(f"folder:{tmp_path}", "") == sources.DatasetInfo(20, 0)
  b = _take(_pretrain(f"folder:{tmp_path}", global_batch_size=4), 1)[0]
  assert (b["label"] == -1).all()


def test_batch_and_process_validation(cifar_jpeg_folder):
  with pytest.raises(OptionsError, match="global_batch_size=10"):
    _pretrain(f"folder:{cifar_jpeg_folder}", global_batch_size=10, process_count=4)
  with pytest.raises(DatasetError, match=r"--config.dataset=.*\(200 examples\) is too small"):
    _pretrain(f"folder:{cifar_jpeg_folder}", global_batch_size=512)


@pytest.mark.parametrize("random_access,canvas", [(True, 0), (False, 0), (True, 32)])
def test_tfds_mock_data(random_access, canvas):
  tfds_options = sources.TfdsOptions(random_access=random_access)
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    kw = dict(global_batch_size=8, seed=1, tfds_options=tfds_options, canvas_size=canvas)
    run = _take(_pretrain("tfds:cifar10", **kw), 7)
    again = _take(_pretrain("tfds:cifar10", start_step=4, **kw), 3)
    images = "canvas" if canvas else "views"
    assert run[0][images].shape == ((8, 32, 32, 3) if canvas else (8, 2, 16, 16, 3))
    for a, b in zip(run[4:], again):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    epoch = np.concatenate([b["index"] for b in run[:5]])
    assert sorted(epoch.tolist()) == list(range(40))
    ev = list(_eval("tfds:cifar10", "test", batch=16,
                    tfds_options=tfds_options).as_numpy_iterator())
    assert len(ev) == 3 and sum(b["mask"].sum() for b in ev) == 40


def test_prefetch_to_mesh_builds_global_arrays(cifar_jpeg_folder):
  import jax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.create_mesh()
  ds = _pretrain(f"folder:{cifar_jpeg_folder}", global_batch_size=16)
  batch = next(sharding.prefetch_to_mesh(ds.as_numpy_iterator(), mesh, 2))
  assert isinstance(batch["views"], jax.Array) and batch["views"].shape == (16, 2, 16, 16, 3)
  assert batch["views"].sharding.is_equivalent_to(sharding.batch_sharded(mesh), 5)


# ---------------------------------------------------------------------------
# Faults during a run, through the reader of data/iterate.py.
# ---------------------------------------------------------------------------
# Valid JPEG start and end markers around garbage: passes decode.py's cheap check,
# then fails TensorFlow's decoder (and PIL's).
CORRUPT_JPEG = b"\xff\xd8\xff" + bytes(range(256)) * 2 + b"\xff\xd9"


def _stream(dataset, log, start_step=0, **kw):
  options = _options(dataset, **kw)
  return iterate.numpy_batches(
      lambda step, checked: pipeline.create_pretrain_dataset(
          options, start_step=step, process_index=0, process_count=1, bad_images=log,
          checked_decoding=checked),
      start=start_step, name=f"--config.dataset={dataset}", read_retry_delays=(1.0, 2.0, 3.0))


def _first(stream, n):
  try:
    return [next(stream) for _ in range(n)]
  finally:
    stream.close()


@pytest.fixture
def corrupt_folder(tmp_path, cifar_jpeg_folder):
  root = shutil.copytree(cifar_jpeg_folder, tmp_path / "corrupt")
  (root / "cat" / "0005.jpg").write_bytes(CORRUPT_JPEG)
  return root


def test_a_marker_valid_corrupt_jpeg_is_named_and_replaced_without_shifting_positions(
    corrupt_folder, cifar_jpeg_folder):
  log = decode.BadImageLog()
  epoch = 200 // 16
  got = _first(_stream(f"folder:{corrupt_folder}", log), epoch)
  want = _first(_stream(f"folder:{cifar_jpeg_folder}", decode.BadImageLog()), epoch)
  assert list(log.snapshot()) == [str(corrupt_folder / "cat" / "0005.jpg")]
  bad = folders.list_folder(str(corrupt_folder)).paths.index(str(corrupt_folder / "cat" /
                                                                 "0005.jpg"))
  for g, w in zip(got, want):
    rows = np.flatnonzero(w["index"] != bad)
    # Every position is where the undisturbed stream has it; the bad row is replaced.
    np.testing.assert_array_equal(g["index"][rows], w["index"][rows])
    np.testing.assert_array_equal(g["views"][rows], w["views"][rows])
    assert bad not in g["index"]


def test_a_corrupt_jpeg_without_skipping_is_one_line_naming_it(corrupt_folder):
  stream = _stream(f"folder:{corrupt_folder}", decode.BadImageLog(), skip_bad_images=False)
  with pytest.raises(DatasetError) as error:
    _first(stream, 200 // 16)
  message = str(error.value)
  assert message.startswith(f"Unreadable image {corrupt_folder / 'cat' / '0005.jpg'}: ")
  assert "\n" not in message and "skip_bad_images=True" in message


def test_evaluation_streams_skip_and_name_a_corrupt_jpeg(corrupt_folder, cifar_jpeg_folder):
  calls = []

  def embed(images):
    calls.append(images.shape)
    return images.reshape(images.shape[0], -1)[:, :4]

  mesh = sharding.create_mesh(jax.devices()[:1])
  feats, labels = features.dataset_features(embed, mesh, f"folder:{corrupt_folder}", "[:10]",
                                            image_size=16, batch_size=40, transform="identity")
  assert len(feats) == len(labels) == 99  # 100 images, the corrupt one masked out
  with pytest.raises(DatasetError, match=r"^Unreadable image .*cat/0005\.jpg: "):
    features.dataset_features(embed, mesh, f"folder:{corrupt_folder}", "[:10]", image_size=16,
                              batch_size=40, transform="identity", skip_bad_images=False)


def test_a_folder_renamed_for_a_moment_gives_the_undisturbed_batches(cifar_jpeg_folder,
                                                                      tmp_path):
  data = shutil.copytree(cifar_jpeg_folder, tmp_path / "data")
  want = _first(_stream(f"folder:{data}", decode.BadImageLog(), start_step=3), 30)
  stream = _stream(f"folder:{data}", decode.BadImageLog(), start_step=3)
  got = [next(stream) for _ in range(2)]
  # The reader has read ahead a little; what it has not read yet fails while the folder is gone.
  data.rename(tmp_path / "elsewhere")
  threading.Timer(2.5, (tmp_path / "elsewhere").rename, (data,)).start()
  got += _first(stream, 28)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["index"], w["index"])
    np.testing.assert_array_equal(g["views"], w["views"])
