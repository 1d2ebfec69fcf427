"""evaluation/knn_program.py: the kNN program, through its function and through main.py."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import knn as knn_config
from mixsiam_jax.data import DatasetError
from mixsiam_jax.evaluation import knn_program
from mixsiam_jax.options.programs import from_config
from mixsiam_jax.workdir import metrics_file
from tests.helpers import override, snapshot

REPO = pathlib.Path(__file__).resolve().parents[1]


def _knn_config(folder, pretrained, **overrides):
  config = knn_config.get_config()
  config.pretrained = str(pretrained)
  config.dataset = config.eval_dataset = f"folder:{folder}"
  config.eval_batch_size = 40
  config.knn.k = 10
  return override(config, overrides)


@pytest.mark.slow
def test_knn_program_uses_the_checkpoint_image_size_and_leaves_the_run_untouched(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  before = snapshot(tiny_pretrained, mtimes=True)
  # k and batch of the tiny pretraining config, whose monitor saw the same data at the end.
  config = _knn_config(cifar_jpeg_folder, tiny_pretrained, eval_batch_size=64, **{"knn.k": 20})
  assert config.image_size == -1  # The default: the size the checkpoint was trained at.
  result = knn_program.run_knn(from_config(config), str(tmp_path / "knn"))
  assert result["image_size"] == result["pretrained_image_size"] == 16
  assert result["pretrained_step"] == 6 and 0 <= result["knn_top1"] <= result["knn_top5"] <= 100
  assert json.loads((tmp_path / "knn" / "results.json").read_text()) == result
  logged = [r for r in metrics_file.read_metrics(str(tiny_pretrained)) if "knn_top1" in r][-1]
  assert result["knn_top1"] == pytest.approx(logged["knn_top1"])
  assert result["knn_top5"] == pytest.approx(logged["knn_top5"])
  assert snapshot(tiny_pretrained, mtimes=True) == before


@pytest.mark.slow
def test_knn_program_with_a_missing_data_folder_writes_nothing(tiny_pretrained, tmp_path):
  missing = tmp_path / "no_such_folder"
  config = _knn_config(str(missing), tiny_pretrained)
  with pytest.raises(DatasetError, match="no_such_folder.*does not exist"):
    knn_program.run_knn(from_config(config), str(tmp_path / "knn"))
  assert not (tmp_path / "knn").exists()


@pytest.mark.slow
def test_knn_program_names_eval_split_for_a_bad_folder_split(tiny_pretrained, cifar_jpeg_folder,
                                                              tmp_path):
  config = _knn_config(cifar_jpeg_folder, tiny_pretrained, eval_split="test[:")
  with pytest.raises(DatasetError,
                     match=r"^eval_split='test\[:' is not a valid split of a folder"):
    knn_program.run_knn(from_config(config), str(tmp_path / "knn"))
  assert not (tmp_path / "knn").exists()


def _run_main(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=env)


def _error_line(result):
  """The one line a refused run ends with (asserting there is nothing else to it)."""
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), result.stderr[-3000:]
  return last


@pytest.mark.slow
def test_main_refuses_knn_in_a_pretraining_workdir_and_a_garbage_file_in_one_line(
    tiny_pretrained, cifar_jpeg_folder, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(tiny_pretrained, run)
  before = snapshot(run, mtimes=True)
  data = f"--config.dataset=folder:{cifar_jpeg_folder}"
  line = _error_line(_run_main("--config=configs/knn.py", f"--workdir={run}", data,
                               f"--config.eval_dataset=folder:{cifar_jpeg_folder}",
                               f"--config.pretrained={run}"))
  assert line == (f"error: --workdir={run} holds a pretraining run, not a kNN run: give the kNN "
                  "program its own --workdir (it reads the pretraining run through "
                  f"--config.pretrained={run}).")
  assert snapshot(run, mtimes=True) == before

  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(np.random.default_rng(0).bytes(3000))
  line = _error_line(_run_main("--config=configs/knn.py", f"--workdir={tmp_path / 'knn'}", data,
                               f"--config.eval_dataset=folder:{cifar_jpeg_folder}",
                               f"--config.pretrained={garbage}"))
  assert line.startswith(f"error: {garbage} is not a readable state-dict file (not a zip "
                         "archive, which an .npz file is)")
  assert not (tmp_path / "knn").exists()
