"""What the evaluation programs share: the encoder they evaluate, its image size, results.json.

They serve the programs knn_program.run_knn and linear_probe.run_linear_probe.
"""
import json
import os
from typing import Any, Dict, Optional

import jax
from absl import logging
from jax.sharding import Mesh

from mixsiam_jax.evaluation import encoder
from mixsiam_jax.options.shared import EncoderSource, FROM_ENCODER
from mixsiam_jax.run import metric_writer
from mixsiam_jax.workdir import paths

RESULTS_FILE = "results.json"


def restore(source: EncoderSource, mesh: Mesh,
            step: Optional[int] = None) -> encoder.FrozenEncoder:
  """The encoder ``source`` names (a pretraining workdir, or a file of the given architecture).

  Args:
    source: from the program's options.
    mesh: where the variables go.
    step: the checkpoint step of a workdir (None: the newest).

  Returns:
    The FrozenEncoder.
  """
  return encoder.restore_encoder(source.pretrained, mesh, step=step,
                                 file_architecture=source.file_architecture)


def resolve_image_size(requested: int, frozen: encoder.FrozenEncoder) -> int:
  """The side of the evaluated images: the encoder's training size unless asked otherwise.

  Args:
    requested: the options' image size (checked: positive, or FROM_ENCODER (-1),
      which takes the encoder's own).
    frozen: the encoder.

  Returns:
    The image size; a size other than the encoder's is used, with a warning.

  """
  if requested == FROM_ENCODER:
    return frozen.image_size
  if requested != frozen.image_size:
    logging.warning("image_size=%d differs from the %d px that %s (step %d) was trained at; "
                    "features at another size usually score lower. Leave --config.image_size "
                    "at -1 to evaluate at the training size.", requested, frozen.image_size,
                    frozen.source, frozen.step)
  return requested


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
    paths.atomic_write_text(os.path.join(workdir, RESULTS_FILE),
                            json.dumps(results, indent=2, sort_keys=True))
