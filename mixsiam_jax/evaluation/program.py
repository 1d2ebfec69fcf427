"""What the evaluation programs share: the encoder they evaluate, its image size, results.json.

These read the config (they serve the top-level programs knn.run_knn and
linear_probe.run_linear_probe); everything they return is validated.
"""
import json
import os
from typing import Any, Dict, Optional

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from mixsiam_jax import metric_writer, workdir as workdir_lib
from mixsiam_jax.evaluation import encoder, features
from mixsiam_jax.options import OptionsError

RESULTS_FILE = "results.json"
# config.image_size of the evaluation configs that means "the size the encoder was trained at".
FROM_ENCODER = -1


def restore(config: ml_collections.ConfigDict, mesh: Mesh,
            step: Optional[int] = None) -> encoder.FrozenEncoder:
  """The encoder named by ``config.pretrained`` (and ``config.pretrained_model`` for a file).

  Args:
    config: an evaluation config (configs/common.py).
    mesh: where the variables go.
    step: the checkpoint step of a workdir (None: the newest).

  Returns:
    The FrozenEncoder.
  """
  arch = encoder.FileArchitecture(**config.pretrained_model.to_dict())
  return encoder.restore_encoder(config.pretrained, mesh, step=step, file_architecture=arch)


def resolve_image_size(requested: int, frozen: encoder.FrozenEncoder) -> int:
  """The side of the evaluated images: the encoder's training size unless asked otherwise.

  Args:
    requested: config.image_size; FROM_ENCODER (-1) takes the encoder's own.
    frozen: the encoder.

  Returns:
    The image size; a size other than the encoder's is used, with a warning.

  Raises:
    OptionsError: for anything but -1 or a positive integer.
  """
  if requested == FROM_ENCODER:
    return frozen.image_size
  if isinstance(requested, bool) or not (isinstance(requested, int) and requested > 0):
    raise OptionsError(f"image_size={requested!r} must be a positive integer, or -1 for the "
                       f"size the encoder was trained at ({frozen.image_size}).")
  if requested != frozen.image_size:
    logging.warning("image_size=%d differs from the %d px that %s (step %d) was trained at; "
                    "features at another size usually score lower. Leave --config.image_size "
                    "at -1 to evaluate at the training size.", requested, frozen.image_size,
                    frozen.source, frozen.step)
  return requested


def eval_data(config: ml_collections.ConfigDict, image_size: int) -> features.EvalData:
  """The two splits of an evaluation or pretraining config, read at ``image_size``."""
  return features.EvalData(
      dataset=config.dataset, train_split=config.train_split, eval_dataset=config.eval_dataset,
      eval_split=config.eval_split, image_size=image_size, batch_size=config.eval_batch_size,
      transform=config.data.eval_transform, skip_bad_images=config.data.skip_bad_images)


def write_results(workdir: str, step: int, results: Dict[str, Any]) -> None:
  """Logs the numeric results at ``step`` (metrics.jsonl, TensorBoard) and writes results.json."""
  writer = metric_writer.create_writer(workdir, jax.process_index() == 0)
  try:
    writer.write_scalars(step, {k: v for k, v in results.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
  finally:
    writer.close()
  write_results_file(workdir, results)


def write_results_file(workdir: str, results: Dict[str, Any]) -> None:
  """Writes ``results`` to workdir/results.json (process 0 only; atomically)."""
  if jax.process_index() == 0:
    workdir_lib.atomic_write_text(os.path.join(workdir, RESULTS_FILE),
                                  json.dumps(results, indent=2, sort_keys=True))
