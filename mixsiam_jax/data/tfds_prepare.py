"""TFDS data sets prepared on first use, in the array_record format that random access needs.

A ``tfds:NAME`` data set that is not prepared in the TFDS data folder
(``TFDS_DATA_DIR``, default ~/tensorflow_datasets) is downloaded and prepared
once, before the program opens it, in array_record (random access: every batch
is a pure function of (seed, step), whatever the number of processes). Before
any download the hosts of the data set's URLs are tried with a short timeout, so
a machine without internet is told at once (TFDS's own downloader retries for
minutes), with the two ways out. A data set already prepared as TFRecords only
is refused with the one command that sets it aside to be prepared again; it is
never read in another order (TFDS's own converter, ``tfds convert_format``,
needs Apache Beam). Data sets that TFDS cannot download (ImageNet) need their
archives in the manual folder, which the message names. ``python -m
mixsiam_jax.data prepare tfds:NAME ...`` (data/__main__.py) prepares data sets
without training, e.g. on a machine with internet.
"""
import os
import socket
import time
import urllib.parse
import urllib.request
from typing import Callable, Optional, Sequence, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

from mixsiam_jax.data import DatasetError, sources
from mixsiam_jax.options import data_names
from mixsiam_jax.workdir import paths

# Seconds to wait for a TCP connection to a download host before calling the machine offline.
CONNECT_TIMEOUT_SECONDS = 10.0


def _advice(name: str, flag: str) -> str:
  return (f"Either point TFDS_DATA_DIR at a folder where {name} is prepared (`python -m "
          f"mixsiam_jax.data prepare tfds:{name}` on a machine with internet, then copy "
          f"that folder here), or use {flag}=folder:PATH (PATH/<class>/<image>).")


def _endpoint(url: str) -> Tuple[str, int]:
  """The host and port a download of ``url`` connects to first: its proxy's, if one is set."""
  parsed = urllib.parse.urlparse(url)
  proxy = urllib.request.getproxies().get(parsed.scheme)
  if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
    proxied = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return proxied.hostname or "", proxied.port or 8080
  return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def check_reachable(urls: Sequence[str], timeout: float = CONNECT_TIMEOUT_SECONDS
                    ) -> Optional[str]:
  """Tries a TCP connection to the host (or proxy) of each URL.

  Args:
    urls: the download URLs.
    timeout: seconds per connection attempt.

  Returns:
    None if every host accepted a connection, else 'HOST:PORT (the OS error)'
    for the first that did not.
  """
  for host, port in sorted({_endpoint(url) for url in urls}):
    try:
      with socket.create_connection((host, port), timeout=timeout):
        pass
    except OSError as e:
      return f"{host}:{port} ({e.strerror or e})"
  return None


def _has_random_access(builder) -> bool:
  formats = builder.info.available_file_formats()
  return bool(formats & set(tfds.core.FileFormat.with_random_access()))


def _download_and_prepare(builder, name: str, field: str, flag: str) -> None:
  """Downloads (or generates) and prepares ``builder`` in array_record; raises DatasetError."""
  urls = sorted(builder.url_infos or {})
  manual_dir = os.path.join(builder.data_dir_root, "downloads", "manual")
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise DatasetError(
          f"{field}=tfds:{name} is not prepared in {builder.data_dir_root}, and TFDS cannot "
          f"download it: put its archives in {manual_dir} (docs/imagenet.md for ImageNet) and "
          f"rerun to prepare it there, or use {flag}=folder:PATH.")
  elif urls:
    unreachable = check_reachable(urls)
    if unreachable:
      raise DatasetError(f"the download of {name} failed: cannot connect to {unreachable}. "
                         + _advice(name, flag))
  size = sum(int(info.size) for info in (builder.url_infos or {}).values())
  what = (f"downloading {paths.format_bytes(size)} from {urllib.parse.urlparse(urls[0]).hostname}"
          if urls and not builder.MANUAL_DOWNLOAD_INSTRUCTIONS else
          f"reading the archives in {manual_dir}" if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else
          "generating its examples")
  logging.info("TFDS data set %s is not prepared in %s: %s and preparing it once in "
               "array_record (downloads kept in %s).", name, builder.data_dir_root, what,
               os.path.join(builder.data_dir_root, "downloads"))
  start = time.monotonic()
  try:
    builder.download_and_prepare(file_format=tfds.core.FileFormat.ARRAY_RECORD.value)
  except (OSError, IOError, AssertionError) as e:
    # requests' ConnectionError is an OSError; TFDS reports a bad manual folder as an AssertionError.
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise DatasetError(f"the download or preparation of {name} failed: {first}. "
                       + _advice(name, flag)) from None
  logging.info("Prepared %s in %s in %.0f s.", name, builder.data_dir, time.monotonic() - start)


def ensure_prepared(dataset: str, field: str = "dataset", data_dir: Optional[str] = None,
                    flag: Optional[str] = None) -> None:
  """Makes sure a ``tfds:NAME`` data set can be opened with random access; folders pass.

  Args:
    dataset: 'tfds:NAME' or 'folder:PATH'.
    field: the config field that gave it, named in errors.
    flag: the command-line flag that sets it, in the advice (None: --config.FIELD).
    data_dir: TFDS data folder (None: TFDS_DATA_DIR or ~/tensorflow_datasets).

  Raises:
    DatasetError: unknown name; offline (one line: the host that could not be
      reached and the two ways out); a manual download missing; prepared as
      TFRecords only (with the command that converts it).
  """
  kind, name = data_names.parse_dataset(dataset, field)
  if kind != "tfds":
    return
  builder = sources.tfds_builder(name, data_dir, field)
  # builder.is_prepared() would log a warning for every version folder without its info file.
  if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
    _download_and_prepare(builder, name, field, flag or f"--config.{field}")
    builder = sources.tfds_builder(name, data_dir, field)  # reads the new dataset_info.json
  if not _has_random_access(builder):
    raise sources.no_random_access(builder, field)


def ensure_prepared_on_all_processes(datasets: Sequence[Tuple[str, str]], *, process_index: int,
                                     process_count: int,
                                     agree: Callable[[bool], bool]) -> None:
  """Prepares each data set: process 0 first, then the others (which usually find it done).

  Process 0 downloads and prepares while the other processes wait for it; they
  then check their own TFDS folder, which is the same one on shared storage and
  a copy of their own (prepared then) on a host-local disk.

  Args:
    datasets: (dataset, config field) pairs, e.g. [('tfds:cifar10', 'dataset')].
    process_index, process_count: this process and the number of processes.
    agree: (this process's ok) -> whether process 0 succeeded; every process
      calls it once (a broadcast from process 0 in a multi-process run).

  Raises:
    DatasetError: this process could not prepare a data set, or process 0 could
      not (its own log says why).
  """
  def prepare_all():
    for dataset, field in datasets:
      ensure_prepared(dataset, field)

  if process_count == 1:
    prepare_all()
    return
  failure = None
  if process_index == 0:
    try:
      prepare_all()
    except DatasetError as e:
      failure = e
  ok = agree(failure is None)
  if failure is not None:
    raise failure
  if not ok:
    raise DatasetError("process 0 could not prepare the TFDS data sets of this run; its "
                       "own log says why.")
  if process_index != 0:
    prepare_all()


def prepare_for_run(datasets: Sequence[Tuple[str, str]]) -> None:
  """Prepares the TFDS data sets of a run on every process of it (see above).

  Args:
    datasets: (dataset, config field) pairs; folders and repeats are skipped.

  Raises:
    DatasetError: a data set could not be prepared (one line: why and the ways out).
  """
  unique = list(dict.fromkeys((d, f) for d, f in datasets if d.startswith("tfds:")))
  if not unique:
    return

  def agree(ok: bool) -> bool:
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))

  ensure_prepared_on_all_processes(unique, process_index=jax.process_index(),
                                   process_count=jax.process_count(), agree=agree)

