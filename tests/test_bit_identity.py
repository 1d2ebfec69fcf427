"""scripts/bit_identity.py: the runs it makes of both trees, and what counts as a difference."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
import bit_identity  # noqa: E402  pylint: disable=g-import-not-at-top


def test_the_runs_cover_every_program_with_fixed_seeds_on_the_given_folder():
  runs = dict(bit_identity.planned_runs("/data/c10", "/out"))
  assert list(runs) == ["pretrain", "probe", "probe_fast", "knn", "simsiam"]
  for name, args in runs.items():
    assert "--config.dataset=folder:/data/c10" in args, name
    assert "--config.eval_dataset=folder:/data/c10" in args, name
  for name in ("probe", "probe_fast", "knn"):  # evaluate the pretraining run of the same tree
    assert "--config.pretrained=/out/pretrain" in runs[name]
  assert "--config.seed=3" in runs["pretrain"] and "--config.seed=5" in runs["simsiam"]
  assert runs["probe_fast"][0] == "--config=configs/linear_probe.py:fast"


def test_results_differ_in_any_key_but_the_pretrained_path():
  a = {"knn_top1": 41.5, "pretrained": "/a/pretrain", "pretrained_step": 6}
  assert bit_identity.results_differences(a, {**a, "pretrained": "/b/pretrain"}) == []
  assert bit_identity.results_differences(a, {**a, "knn_top1": 41.50001}) == ["knn_top1"]
  assert bit_identity.results_differences(a, {"knn_top1": 41.5, "pretrained": "/b"}) == [
      "pretrained_step"]
