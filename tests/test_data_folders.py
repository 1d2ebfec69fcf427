"""Tests of mixsiam_jax/data/folders.py: listing, links, empty classes, the split grammar."""
import logging
import os

import numpy as np
from PIL import Image
import pytest

from mixsiam_jax.data import DatasetError, folders


def _image_folder(root, sizes, ext="png"):
  """root/<class>/<i>.<ext> with ``sizes[class]`` small generated images."""
  rng = np.random.default_rng(0)
  for cls, n in sizes.items():
    (root / cls).mkdir(parents=True)
    for i in range(n):
      pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / cls / f"{i}.{ext}")
  return root


def test_listing_order_labels_and_non_images(tmp_path):
  root = _image_folder(tmp_path / "d", {"b": 2, "a": 3})
  (root / "a" / "sub").mkdir()
  Image.new("RGB", (4, 4)).save(root / "a" / "sub" / "0.jpg")
  (root / "a" / "notes.txt").write_text("x")
  (root / "a" / ".hidden.png").write_bytes(b"")
  (root / "loose.png").write_bytes(b"")
  listing = folders.list_folder(str(root))
  rel = [os.path.relpath(p, root) for p in listing.paths]
  # Files of a folder (sorted) before its sub-folders; classes sorted.
  assert rel == ["a/0.png", "a/1.png", "a/2.png", "a/sub/0.jpg", "b/0.png", "b/1.png"]
  assert listing.labels == (0, 0, 0, 0, 1, 1) and listing.class_names == ("a", "b")
  assert sorted(os.path.relpath(p, root) for p in listing.non_images) == ["a/notes.txt",
                                                                           "loose.png"]


@pytest.mark.parametrize("target", [".", "..", "../.."])
def test_symlink_loop_lists_each_image_once_and_warns(tmp_path, caplog, target):
  root = _image_folder(tmp_path / "d", {"cat": 3, "dog": 2})
  os.symlink(target, root / "cat" / "loop")
  with caplog.at_level(logging.WARNING):
    listing = folders.list_folder(str(root))
  assert len(listing.paths) == 5 and len(set(listing.paths)) == 5
  assert listing.labels == (0, 0, 0, 1, 1)
  assert len(listing.skipped_links) == 1 and "cat/loop" in listing.skipped_links[0]
  message = caplog.text
  assert "cat/loop" in message and "5 images in 2 class(es)" in message


@pytest.mark.parametrize("target,link", [(".", "loop_top"), ("..", "up"), ("cat", "kitten")])
def test_a_top_level_link_back_into_the_folder_is_no_class_and_no_second_copy(
    tmp_path, caplog, target, link):
  root = _image_folder(tmp_path / "d", {"cat": 3, "dog": 2})
  os.symlink(target, root / link)
  with caplog.at_level(logging.WARNING):
    listing = folders.list_folder(str(root))
  assert listing.class_names == ("cat", "dog") and listing.labels == (0, 0, 0, 1, 1)
  assert len(set(listing.paths)) == 5
  assert len(listing.skipped_links) == 1 and f"d/{link} -> " in listing.skipped_links[0]
  assert "5 images in 2 class(es)" in caplog.text


def test_link_into_another_class_is_not_listed_twice(tmp_path):
  root = _image_folder(tmp_path / "d", {"cat": 2, "dog": 2})
  os.symlink("../dog", root / "cat" / "dogs")
  listing = folders.list_folder(str(root))
  assert listing.labels == (0, 0, 1, 1)


def test_links_outside_the_folder_are_followed(tmp_path):
  extra = _image_folder(tmp_path / "extra", {"more": 2, "birds": 2})
  root = _image_folder(tmp_path / "d", {"cat": 1, "dog": 1})
  os.symlink(extra / "more", root / "cat" / "more")
  os.symlink(extra / "birds", root / "bird")  # A linked class folder.
  listing = folders.list_folder(str(root))
  assert listing.class_names == ("bird", "cat", "dog")
  assert listing.labels == (0, 0, 1, 1, 1, 2) and not listing.skipped_links
  # A link into a linked class folder still lists those images only once.
  os.symlink(extra / "birds", root / "dog" / "birds")
  assert folders.list_folder(str(root)).labels == (0, 0, 1, 1, 1, 2)


def test_empty_class_folder_is_refused_by_name(tmp_path):
  root = _image_folder(tmp_path / "d", {"cat": 2, "dog": 2})
  (root / "bird").mkdir()
  (root / "emu").mkdir()
  (root / "emu" / "README.txt").write_text("no images here")
  with pytest.raises(DatasetError, match=r"'.*/d/bird', '.*/d/emu' hold no images.*shift"):
    folders.list_folder(str(root))


def test_a_changed_folder_is_listed_anew(tmp_path):
  root = _image_folder(tmp_path / "d", {"cat": 2, "dog": 2})
  assert len(folders.list_folder(str(root)).paths) == 4
  Image.new("RGB", (4, 4)).save(root / "dog" / "new.png")
  assert len(folders.list_folder(str(root)).paths) == 5


def test_folder_errors_name_the_field(tmp_path):
  with pytest.raises(DatasetError, match=r"does not exist; check --config.eval_dataset="):
    folders.list_folder(str(tmp_path / "missing"), "eval_dataset")
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  with pytest.raises(DatasetError, match="holds no images"):
    folders.list_folder(str(tmp_path / "empty"))


def test_list_split_keeps_the_split_s_files_and_checks_the_split_first(tmp_path):
  root = _image_folder(tmp_path / "d", {"a": 3, "b": 2})
  whole = folders.list_folder(str(root))
  assert folders.list_split(str(root), "train") == whole
  part = folders.list_split(str(root), "[1:]")
  assert [os.path.relpath(p, root) for p in part.paths] == ["a/1.png", "a/2.png", "b/1.png"]
  assert part.labels == (0, 0, 1) and part.class_names == whole.class_names
  with pytest.raises(DatasetError, match=r"^eval_split='\[x:\]' is not a valid split"):
    folders.list_split(str(tmp_path / "missing"), "[x:]", "eval_dataset")  # before listing
  with pytest.raises(DatasetError, match=r"^Split '\[5:\]' selects no image of folder .*"
                     r"\(5 images in 2 class\(es\)\)"):
    folders.list_split(str(root), "[5:]")


def test_split_percent_rounding(tmp_path):
  labels = folders.list_folder(str(_image_folder(tmp_path / "d",
                                                 {"a": 5, "b": 3, "c": 7, "d": 1}))).labels
  # round(p * n / 100), halves to even (TFDS 'closest'): 50% of 5, 3, 7, 1 -> 2, 2, 4, 0.
  for split, counts in (("[:50%]", [2, 2, 4, 0]), ("[50%:]", [3, 1, 3, 1]),
                        ("[:33%]", [2, 1, 2, 0]), ("[33%:]", [3, 2, 5, 1]),
                        ("[10%:90%]", [4, 3, 5, 1]), ("[:4]", [4, 3, 4, 1]),
                        ("[2:4]", [2, 1, 2, 0]), ("", [5, 3, 7, 1])):
    picked = folders.folder_split_indices(labels, split)
    np.testing.assert_array_equal(np.bincount(np.asarray(labels)[picked], minlength=4), counts,
                                  err_msg=split)
  for p in ("13%", "50%", "67.5%"):
    a = folders.folder_split_indices(labels, f"[:{p}]")
    b = folders.folder_split_indices(labels, f"[{p}:]")
    assert not set(a) & set(b) and sorted(set(a) | set(b)) == list(range(16))
