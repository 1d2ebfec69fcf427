"""Tests of mixsiam_jax/data/tfds_prepare.py: prepared on first use, offline in one line."""
import os
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from mixsiam_jax.data import DatasetError, sources, tfds_prepare
from mixsiam_jax.workdir import metrics_file
from tests import entry_points, tfds_generated

GENERATED = f"tfds:{tfds_generated.NAME}"
# A proxy on a port nothing listens on: every download is refused at once, with or
# without internet, so the offline path is tested the same on every machine.
REFUSING_PROXY = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                  "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}


def _files(data_dir):
  version_dir = os.path.join(data_dir, tfds_generated.NAME, "1.0.0")
  return sorted(os.listdir(version_dir)) if os.path.isdir(version_dir) else []


def test_a_generated_data_set_is_prepared_once_in_array_record(tmp_path):
  data_dir = str(tmp_path)
  tfds_prepare.ensure_prepared(GENERATED, data_dir=data_dir)
  files = _files(data_dir)
  assert any(".array_record-" in f for f in files) and not any(".tfrecord-" in f for f in files)
  options = sources.TfdsOptions(data_dir=data_dir)
  source = sources.open_source(GENERATED, "train", tfds_options=options)
  assert source.fetch is not None  # random access
  assert source.info == sources.DatasetInfo(48, 3, ("red", "green", "blue"))
  labels = [int(source.fetch(tf.constant(i, tf.int64))[1]) for i in range(48)]
  assert sorted(labels) == sorted(list(range(3)) * 16)  # TFDS stores them shuffled
  assert tf.io.decode_jpeg(source.fetch(tf.constant(4, tf.int64))[0]).shape == (20, 24, 3)
  stamps = {f: os.path.getmtime(os.path.join(data_dir, tfds_generated.NAME, "1.0.0", f))
            for f in files}
  tfds_prepare.ensure_prepared(GENERATED, data_dir=data_dir)  # prepared: nothing is rewritten
  assert stamps == {f: os.path.getmtime(os.path.join(data_dir, tfds_generated.NAME, "1.0.0", f))
                    for f in _files(data_dir)}


def test_tfrecords_are_refused_with_the_command_that_fixes_it(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path)
  tfds.builder(tfds_generated.NAME, data_dir=data_dir).download_and_prepare()  # TFRecords
  with pytest.raises(DatasetError, match="no random access") as refused:
    tfds_prepare.ensure_prepared(GENERATED, data_dir=data_dir)
  with pytest.raises(DatasetError, match="no random access"):  # never read in another order
    sources.get_dataset_info(GENERATED, "train", tfds_options=sources.TfdsOptions(data_dir=data_dir))
  message = str(refused.value)
  assert "\n" not in message
  command = message[message.index("mv "):].split()
  subprocess.run(command, check=True)
  tfds_prepare.ensure_prepared(GENERATED, data_dir=data_dir)
  assert any(".array_record-" in f for f in _files(data_dir))
  assert sources.get_dataset_info(
      GENERATED, "train", tfds_options=sources.TfdsOptions(data_dir=data_dir)).num_examples == 48


def test_offline_download_fails_at_once_with_both_ways_out(tmp_path, monkeypatch):
  for key, value in REFUSING_PROXY.items():
    monkeypatch.setenv(key, value)
  start = time.monotonic()
  with pytest.raises(DatasetError) as err:
    tfds_prepare.ensure_prepared("tfds:cifar10", field="eval_dataset", data_dir=str(tmp_path))
  assert time.monotonic() - start < 10
  message = str(err.value)
  assert message.startswith("the download of cifar10 failed: cannot connect to 127.0.0.1:9")
  assert "TFDS_DATA_DIR" in message and "--config.eval_dataset=folder:PATH" in message
  assert "\n" not in message
  assert not os.path.exists(tmp_path / "cifar10" / "3.0.2" / "dataset_info.json")


def test_a_manual_data_set_names_its_manual_folder(tmp_path):
  with pytest.raises(DatasetError, match=r"cannot download it: put its archives in "
                                         + str(tmp_path / "downloads" / "manual")):
    tfds_prepare.ensure_prepared("tfds:imagenet2012", data_dir=str(tmp_path))


def test_unknown_names_and_folders():
  with pytest.raises(DatasetError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
    tfds_prepare.ensure_prepared("tfds:no_such_dataset_xyz")
  tfds_prepare.ensure_prepared("folder:/does/not/matter")  # folders need no preparation


def test_check_reachable_tries_the_host_or_its_proxy(monkeypatch):
  for key in REFUSING_PROXY:
    monkeypatch.delenv(key, raising=False)
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert tfds_prepare.check_reachable([f"http://127.0.0.1:{port}/data.tar.gz"]) is None
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    # The unresolvable host is not tried: the proxy is what a download connects to.
    assert tfds_prepare.check_reachable(["https://no-such-host.invalid/data.tar.gz"]) is None
  assert tfds_prepare.check_reachable(
      [f"http://127.0.0.1:{port}/x"], timeout=2).startswith(f"127.0.0.1:{port} (")


@pytest.mark.parametrize("process_index", [0, 1])
def test_process_0_prepares_first_and_its_failure_reaches_every_process(process_index,
                                                                       monkeypatch):
  calls = []

  def prepare(dataset, field):
    calls.append((process_index, dataset))

  monkeypatch.setattr(tfds_prepare, "ensure_prepared", prepare)
  said = []

  def agree(ok):
    said.append(ok)
    return ok if process_index == 0 else True
  tfds_prepare.ensure_prepared_on_all_processes([("tfds:a", "dataset")], process_index=process_index,
                                                process_count=2, agree=agree)
  # Process 0 prepares before the others are released; they then check their own folder.
  assert calls == [(process_index, "tfds:a")] and said == [True]

  def fail(dataset, field):
    raise DatasetError("offline")
  monkeypatch.setattr(tfds_prepare, "ensure_prepared", fail if process_index == 0 else prepare)
  with pytest.raises(DatasetError, match="offline" if process_index == 0 else
                     "process 0 could not prepare"):
    tfds_prepare.ensure_prepared_on_all_processes(
        [("tfds:a", "dataset")], process_index=process_index, process_count=2,
        agree=lambda ok: False)


@pytest.mark.slow
def test_main_prepares_an_unprepared_data_set_and_trains_on_it(tmp_path):
  workdir = tmp_path / "run"
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), **REFUSING_PROXY}
  result = subprocess.run(
      [sys.executable, tfds_generated.__file__, "--config=configs/cifar10.py:tiny",
       f"--workdir={workdir}", f"--config.dataset={GENERATED}", "--config.train_split=train",
       f"--config.eval_dataset={GENERATED}", "--config.eval_split=test",
       "--config.num_train_steps=4", "--config.batch_size=8", "--config.eval_batch_size=8"],
      cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True,
      timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"TFDS data set {tfds_generated.NAME} is not prepared" in result.stderr
  assert "preparing it once in array_record" in result.stderr
  assert any(".array_record-" in f for f in _files(str(tmp_path / "tfds")))
  rows = metrics_file.read_metrics(str(workdir))
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]
  assert "knn_top1" in rows[-1]


def test_the_prepare_command_offline_is_one_line(tmp_path):
  start = time.monotonic()
  result = entry_points.run("-m", "mixsiam_jax.data", "prepare", "tfds:cifar10",
                            TFDS_DATA_DIR=str(tmp_path), **REFUSING_PROXY)
  line = entry_points.one_error_line(result)
  assert line.startswith("error: the download of cifar10 failed: cannot connect to 127.0.0.1:9")
  assert time.monotonic() - start < 60


def test_the_prepare_command_prepares_a_data_set(tmp_path):
  # The generating builder is registered by importing tests/tfds_generated.py first.
  result = entry_points.run(
      "-c", "import sys; from tests import tfds_generated; from mixsiam_jax.data import "
      "__main__ as m; m.cli.run_tool(lambda: m.main(sys.argv[1:]))", "prepare", GENERATED,
      f"--data_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"{GENERATED} is prepared." in result.stdout
  assert any(".array_record-" in f for f in _files(str(tmp_path)))
