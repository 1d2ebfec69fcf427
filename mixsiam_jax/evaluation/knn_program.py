"""The kNN program: kNN top-1/top-5 of a pretrained encoder, written to results.json."""
import dataclasses
from typing import Any, Dict

import jax

from absl import logging

from mixsiam_jax import sharding
from mixsiam_jax.data import tfds_prepare
from mixsiam_jax.evaluation import encoder, evaluators, program
from mixsiam_jax.options.programs import KnnProgramOptions
from mixsiam_jax.workdir import run_files


def run_knn(opts: KnnProgramOptions, workdir: str) -> Dict[str, Any]:
  """Restores the encoder ``opts`` names and reports its kNN top-1/top-5 (percent).

  The encoder is evaluated at the image size it was trained at unless
  ``opts.data.image_size`` says otherwise (then with a warning). Everything is
  checked before anything is written to ``workdir``.

  Args:
    opts: from options.programs.knn_program_options.
    workdir: where results.json, metrics.jsonl and config.json go (the
      pretraining workdir is only read).

  Returns:
    The results dict (also written to workdir/results.json): knn_top1,
    knn_top5, pretrained, pretrained_step, image_size, pretrained_image_size,
    k, temperature.
  """
  run_files.check_resume(run_files.check_workdir(workdir), opts.record)
  mesh = sharding.create_mesh()
  tfds_prepare.prepare_for_run(opts.data.data_sets())
  frozen = program.restore(opts.encoder, mesh)
  image_size = program.resolve_image_size(opts.data.image_size, frozen)
  monitor = evaluators.KnnMonitor(encoder.make_embed_fn(frozen.resnet, mesh), mesh,
                                  dataclasses.replace(opts.data, image_size=image_size),
                                  opts.knn, user="the kNN program")
  workdir = run_files.start_run(workdir, opts.record, 0)
  results = monitor(frozen.variables)
  frozen.check_unchanged()
  results.update(pretrained=frozen.source, pretrained_step=frozen.step, image_size=image_size,
                 pretrained_image_size=frozen.image_size, k=opts.knn.k,
                 temperature=opts.knn.temperature)
  program.write_results(workdir, frozen.step, results)
  if jax.process_index() == 0:
    logging.info("kNN of %s (step %d, %d px): top-1 %.2f%%, top-5 %.2f%%.", frozen.source,
                 frozen.step, image_size, results["knn_top1"], results["knn_top5"])
  return results
