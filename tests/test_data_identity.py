"""Tests of mixsiam_jax/data/identity.py: the fingerprint of a folder split and of TFDS."""
import os
import shutil

import pytest
import tensorflow_datasets as tfds

from mixsiam_jax.data import DatasetError, identity


def _folder(root, files):
  """root/<relative name> with the given bytes for each {name: bytes}."""
  for name, data in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
  return root


FILES = {"a/0.jpg": b"xx", "a/1.jpg": b"yyy", "b/0.png": b"z", "b/1.png": b"zz"}


def fingerprint(root, split=""):
  return identity.identify(f"folder:{root}", split).fingerprint


def test_a_folder_split_keeps_its_fingerprint_when_moved_and_not_when_a_file_changes(tmp_path):
  root = _folder(tmp_path / "d", FILES)
  first = fingerprint(root)
  assert len(first) == identity.FINGERPRINT_DIGITS and int(first, 16) >= 0
  assert identity.identify(f"folder:{root}", "").record() == {"fingerprint": first}
  (root / "a" / "notes.txt").write_text("not an example")  # not listed as an image
  assert fingerprint(shutil.copytree(root, tmp_path / "moved")) == first
  assert fingerprint(root) == first
  (root / "a" / "1.jpg").write_bytes(b"yyyy")  # another size
  assert fingerprint(root) != first
  (root / "a" / "1.jpg").write_bytes(b"yyy")
  assert fingerprint(root) == first
  (root / "a" / "1.jpg").rename(root / "a" / "2.jpg")  # same count, another name
  assert fingerprint(root) != first


def test_a_file_moved_to_another_class_or_a_renamed_class_changes_it(tmp_path):
  root = _folder(tmp_path / "d", FILES)
  first = fingerprint(root)
  (root / "a" / "1.jpg").rename(root / "b" / "9.jpg")
  assert fingerprint(root) != first
  (root / "b" / "9.jpg").rename(root / "a" / "1.jpg")
  assert fingerprint(root) == first
  (root / "b").rename(root / "c")
  assert fingerprint(root) != first


def test_only_the_split_s_files_count(tmp_path):
  root = _folder(tmp_path / "d", FILES)
  first, held_out = fingerprint(root, "[:1]"), fingerprint(root, "[1:]")
  assert len({first, held_out, fingerprint(root)}) == 3
  (root / "a" / "1.jpg").write_bytes(b"changed")  # in [1:] only
  assert fingerprint(root, "[:1]") == first and fingerprint(root, "[1:]") != held_out


def test_folder_fingerprint_covers_names_sizes_and_classes():
  paths = ["/r/a/0.jpg", "/r/a/1.jpg"]
  base = identity.folder_fingerprint("/r", ["a"], paths, [2, 3])
  assert identity.folder_fingerprint("/elsewhere", ["a"], ["/elsewhere/a/0.jpg",
                                                           "/elsewhere/a/1.jpg"], [2, 3]) == base
  assert identity.folder_fingerprint("/r", ["a"], paths, [3, 2]) != base
  assert identity.folder_fingerprint("/r", ["a", "b"], paths, [2, 3]) != base
  assert identity.folder_fingerprint("/r", ["a"], paths[::-1], [3, 2]) != base
  # Separators cannot be forged by names: 'a/0.jpg' + size 12 differs from 'a/0.jpg1' + 2.
  assert (identity.folder_fingerprint("/r", ["a"], ["/r/a/0.jpg"], [12])
          != identity.folder_fingerprint("/r", ["a"], ["/r/a/0.jpg1"], [2]))


def test_file_sizes_in_chunks_keep_the_order_and_name_a_missing_file(tmp_path, monkeypatch):
  monkeypatch.setattr(identity, "_STAT_CHUNK", 3)  # several chunks on a few files
  paths = []
  for i in range(10):
    path = tmp_path / f"{i}.bin"
    path.write_bytes(b"x" * i)
    paths.append(str(path))
  assert identity.file_sizes(paths) == list(range(10))
  os.remove(paths[7])
  with pytest.raises(DatasetError, match=rf"^--config.eval_dataset: cannot read '{paths[7]}' "
                     r"\(No such file or directory\)\.$"):
    identity.file_sizes(paths, field="eval_dataset")


def test_tfds_identity_is_its_full_name_split_and_size():
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    ident = identity.identify("tfds:cifar10", "train")
  full_name = tfds.builder("cifar10").info.full_name
  assert ident.tfds_version == full_name and full_name.startswith("cifar10/")
  assert ident.record() == {"fingerprint": ident.fingerprint, "tfds_version": full_name}
  assert ident.fingerprint == identity.tfds_fingerprint(full_name, "train", 12)
  assert identity.tfds_fingerprint("cifar10/3.0.1", "train", 12) != ident.fingerprint
  assert identity.tfds_fingerprint(full_name, "test", 12) != ident.fingerprint
