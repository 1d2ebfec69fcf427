"""The pretraining program: options -> data, model, optimiser, step -> the shared skeleton.

``train_and_evaluate`` takes the run's PretrainOptions (options/programs.py),
checks the data and the workdir before writing anything, builds the network,
optimiser and jitted step (recipe.py) and the kNN monitor (evaluators.py), and
hands them to skeleton.train.
"""
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging
from clu import periodic_actions
from jax.sharding import Mesh

from mixsiam_jax import augment, sharding, train
from mixsiam_jax.checkpoints import storage
from mixsiam_jax.checkpoints.run_checkpoints import Checkpoints
from mixsiam_jax.data import (DatasetError, canvas, decode, identity, iterate, pipeline, sources,
                              tfds_prepare)
from mixsiam_jax.evaluation import evaluators
from mixsiam_jax.models import metadata
from mixsiam_jax.options.programs import PretrainOptions
from mixsiam_jax.recipe import Training, build_training
from mixsiam_jax.run import loop, progress, skeleton
from mixsiam_jax.workdir import paths, run_files

# Re-exported: tests and callers catch it from the program they ran.
TrainingError = loop.TrainingError
# The run's data sets: dataset, split, examples, classes, content fingerprint (data/identity.py).
DATA_FILE = "data.json"
_NAMED = ("dataset", "split")
_COUNTS = ("num_examples", "num_classes")


def _preview_images(views: jax.Array, count: int = 4) -> np.ndarray:
  """[B, V, H, W, 3] normalised views -> uint8 [count * V, H, W, 3] for TensorBoard."""
  mean = np.asarray(augment.IMAGENET_MEAN, np.float32)
  std = np.asarray(augment.IMAGENET_STD, np.float32)
  # The local copy of the (replicated) views: slicing the global array would be a
  # computation that every process must join, and this runs on process 0 only.
  x = np.asarray(views.addressable_data(0)[:count], np.float32) * std + mean
  x = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return x.reshape((-1,) + x.shape[2:])


def _data_sets(opts: PretrainOptions) -> List[Tuple[str, str]]:
  """(dataset, config field) of every data set the run reads."""
  sets = [(opts.data.dataset, "dataset")]
  if opts.evaluation is not None:
    sets += opts.evaluation.data_sets()
  return sets


def _describe_set(dataset: str, split: str, info: sources.DatasetInfo,
                  field: str) -> Dict[str, Any]:
  """What data.json records of one data set: its name, split, counts and identity."""
  return dict(dataset=dataset, split=split, num_examples=info.num_examples,
              num_classes=info.num_classes,
              **identity.identify(dataset, split, field=field).record())


def _describe_data(opts: PretrainOptions, train_info: sources.DatasetInfo
                   ) -> Dict[str, Dict[str, Any]]:
  """What the run trains and evaluates on (logged at the start and written to data.json)."""
  described = {"train": _describe_set(opts.data.dataset, opts.data.split, train_info, "dataset")}
  if opts.evaluation is not None:
    e = opts.evaluation
    info = sources.get_dataset_info(e.eval_dataset, e.eval_split, field="eval_dataset")
    described["eval"] = _describe_set(e.eval_dataset, e.eval_split, info, "eval_dataset")
  for role, d in described.items():
    logging.info("%s data: %s split %r: %d examples, %d classes (fingerprint %s).", role,
                 d["dataset"], d["split"], d["num_examples"], d["num_classes"],
                 d["fingerprint"])
  return described


@dataclasses.dataclass(frozen=True)
class StateFunctions:
  """How a pretraining run's TrainState is made and goes into checkpoints.

  Attributes:
    step_rng: the run's base key (replicated); every step's augmentations fold
      the step into it.
    init: builds the initial TrainState on the mesh.
    to_tree: state -> checkpoint tree (storage.state_tree).
    from_tree: (initial state, restored tree) -> the resumed state.
  """
  step_rng: jax.Array
  init: Callable[[], train.TrainState]
  to_tree: Callable[[train.TrainState], Dict[str, Any]]
  from_tree: Callable[[train.TrainState, Dict[str, Any]], train.TrainState]


def state_functions(opts: PretrainOptions, training: Training, mesh: Mesh) -> StateFunctions:
  """The StateFunctions of a pretraining run.

  The seed's key splits into the initialisation key and the run's base key.

  Args:
    opts: the run's options (the seed, the image size).
    training: from build_training.
    mesh: the data-parallel mesh.

  Returns:
    The StateFunctions.
  """
  init_rng, step_rng = jax.random.split(jax.random.key(opts.seed))
  step_rng = sharding.replicated_key(step_rng, mesh)
  return StateFunctions(
      step_rng=step_rng,
      init=functools.partial(train.create_train_state, init_rng, training.network, training.tx,
                             image_size=opts.image_size, mesh=mesh),
      to_tree=lambda state: storage.state_tree(state, step_rng),
      from_tree=lambda state, tree: state.replace(
          step=tree["step"], params=tree["params"], batch_stats=tree["batch_stats"],
          opt_state=tree["opt_state"]))


def _with_preview(writer: Any, batches: Iterator[Any], training: Training, rng: jax.Array,
                  step: jax.Array, start_step: int) -> Iterator[Any]:
  """The batches; the first one's x1 / x2 / x_m are written to TensorBoard when it is taken.

  Every process computes the views (a global computation); process 0 writes
  them. Closing this generator closes ``batches``.
  """
  try:
    first = next(batches)
    views = training.views(first, rng, step)
    if jax.process_index() == 0:
      writer.write_images(start_step + 1, {"views": _preview_images(views)})
    yield first
    yield from batches
  finally:
    batches.close()


def _read_data_file(path: str) -> Dict[str, Any]:
  """data.json as a dict; an unreadable one is a WorkdirError naming it."""
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise run_files.WorkdirError(f"{path} is unreadable ({e}); restore it or use a "
                                 "fresh --workdir.") from None
  if not isinstance(recorded, dict):
    raise run_files.WorkdirError(f"{path} is unreadable (a JSON {type(recorded).__name__}, "
                                 "not an object); restore it or use a fresh --workdir.")
  return recorded


def _data_change(role: str, before: Dict[str, Any], now: Dict[str, Any]) -> Optional[str]:
  """How data set ``role`` differs from data.json's record (None: it does not)."""
  if any(before.get(k) != now[k] for k in _NAMED + _COUNTS):
    return (f"the {role} data set differs from the one this run started on ({DATA_FILE}: "
            f"{before.get('num_examples')} examples in {before.get('num_classes')} classes of "
            f"{before.get('dataset')} split {before.get('split')!r}; now {now['num_examples']} "
            f"in {now['num_classes']} of {now['dataset']} split {now['split']!r})")
  if "fingerprint" not in before or before["fingerprint"] == now["fingerprint"]:
    return None
  if now.get("tfds_version") is not None:
    what = (f"same {now['num_examples']} examples, but TFDS {before.get('tfds_version')} in "
            f"{DATA_FILE}, {now['tfds_version']} now")
  else:
    what = (f"same {now['num_examples']} files in {now['num_classes']} classes, but their "
            "names or sizes changed")
  return (f"the {role} data set's content differs from the one this run started on ({what}: "
          f"{DATA_FILE} fingerprint {before['fingerprint']}, now {now['fingerprint']})")


def check_same_data(workdir: str, described: Dict[str, Dict[str, Any]]) -> None:
  """Refuses a resume on data sets other than the ones the workdir's data.json records.

  Only a workdir with checkpoints is checked: a run without any starts over. Data
  sets are compared by name, split, counts and content fingerprint. An evaluation
  set whose name or split the config changed is not compared (those fields may
  change on a resume: resume_rules.SAFE_TO_CHANGE). A data.json written before
  fingerprints were recorded is compared without them, with one warning; the run
  then rewrites it with them.

  Args:
    workdir: the run's directory (from skeleton.open_workdir).
    described: from _describe_data.

  Raises:
    WorkdirError: the workdir holds checkpoints but no data.json, or an unreadable one.
    DatasetError: one line naming the data set, what changed and the fixes.
  """
  if not run_files.checkpoint_steps(workdir):
    return  # a new run, or one stopped before its first checkpoint: it records its data anew
  run_files.check_record_kept(workdir, DATA_FILE, "the data sets they were trained on")
  path = os.path.join(workdir, DATA_FILE)
  recorded = _read_data_file(path)
  unfingerprinted = []
  for role, now in described.items():
    before = recorded.get(role)
    if not isinstance(before, dict):
      continue  # the run had no such data set (an evaluation set added on this resume)
    if role != "train" and any(before.get(k) != now[k] for k in _NAMED):
      continue  # eval_dataset or eval_split changed: allowed, recorded by the config check
    change = _data_change(role, before, now)
    if change:
      raise DatasetError(f"{change}. Restore the data and rerun, or start a new run in a new "
                         "--workdir.")
    if "fingerprint" not in before:
      unfingerprinted.append(role)
  if unfingerprinted:
    logging.warning("%s was written before runs recorded their data's fingerprint: the %s "
                    "data set(s) are checked by name and counts only on this resume.", path,
                    " and ".join(unfingerprinted))


def train_data_options(opts: PretrainOptions, global_batch_size: int, host_views: bool = False
                       ) -> pipeline.TrainDataOptions:
  """The input pipeline's options for pretraining with ``opts`` at ``global_batch_size``;
  ``host_views`` makes the host resize the crops even where the step would."""
  on_device = opts.data.resize_on_device and not host_views
  return pipeline.TrainDataOptions(
      dataset=opts.data.dataset, split=opts.data.split, global_batch_size=global_batch_size,
      image_size=opts.image_size, seed=opts.seed, crop_scale=opts.data.crop_scale,
      host_photometric=None if opts.photometric_on_device else opts.photometric,
      canvas_size=opts.data.canvas_size if on_device else 0,
      skip_bad_images=opts.data.skip_bad_images)


def _training_stream(opts: PretrainOptions, info: sources.DatasetInfo,
                     start_step: int) -> iterate.BatchStream:
  """The training batches from ``start_step`` + 1 on; the first data set is built (and the
  data checked) now, the reading starts when the stream is first read."""
  data_options = train_data_options(opts, opts.batch_size)
  bad_images = decode.BadImageLog()
  overflows = canvas.OverflowLog(data_options.canvas_size)

  def make(step, checked):
    return pipeline.create_pretrain_dataset(data_options, start_step=step, expect=info,
                                            bad_images=bad_images, checked_decoding=checked,
                                            canvas_overflows=overflows)
  return iterate.numpy_batches(make, start=start_step, first=make(start_step, False),
                               name=f"--config.dataset={opts.data.dataset}",
                               remembered=bad_images.remembered)


def _profiler(opts: PretrainOptions, path: str, start_step: int) -> Sequence[Any]:
  """The profiler hook when profile_steps is set (process 0 only)."""
  if jax.process_index() != 0 or not opts.profile_steps:
    return ()
  return (periodic_actions.Profile(logdir=path, num_profile_steps=opts.profile_steps,
                                   first_profile=start_step + 10),)


def train_and_evaluate(opts: PretrainOptions, workdir: str,
                       devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, float]:
  """Pretrains MixSiam as ``opts`` say, resuming from ``workdir`` if it holds a run.

  Everything (workdir, data sets, checkpoint) is checked before anything is
  written into the workdir, so a refused or corrected run leaves no trace.

  Args:
    opts: from options.programs.pretrain_options.
    workdir: directory for checkpoints, logs, metrics.jsonl, config.json and data.json.
    devices: devices of the data mesh (default: all devices of all processes).

  Returns:
    The last logged metrics (empty if the run had already finished).
  """
  started = time.monotonic()
  mesh = sharding.create_mesh(devices)
  sharding.check_global_batch(opts.batch_size, mesh)
  tfds_prepare.prepare_for_run(_data_sets(opts))
  info = sources.get_dataset_info(opts.data.dataset, opts.data.split)
  training = build_training(opts, mesh, info.num_examples, info.num_classes)
  workdir = skeleton.open_workdir(workdir, opts.record)
  if workdir.start_step >= training.num_steps:
    logging.info("This run already finished (step %d of %d); nothing to do.", workdir.start_step,
                 training.num_steps)
    return {}
  described = _describe_data(opts, info)
  check_same_data(workdir.path, described)
  stream = _training_stream(opts, info, workdir.start_step)
  evaluate = None
  if opts.evaluation is not None:
    evaluate = evaluators.pretraining_knn_monitor(training.network, mesh, opts.evaluation,
                                                  opts.knn)
  functions = state_functions(opts, training, mesh)
  meta = metadata.pretraining_meta(training.network.model, image_size=opts.image_size,
                                   dataset=opts.data.dataset, train_split=opts.data.split,
                                   seed=opts.seed)

  def on_start(writer):
    paths.atomic_write_text(workdir.file(DATA_FILE), json.dumps(described, indent=2) + "\n")
    if workdir.start_step == 0:
      writer.write_hparams({k: v for k, v in run_files.flatten_config(opts.record).items()
                            if isinstance(v, (int, float, str, bool))})

  def make_batches(state, writer):
    batches = sharding.prefetch_to_mesh(stream, mesh, opts.data.device_prefetch)
    return _with_preview(writer, batches, training, functions.step_rng, state.step,
                         workdir.start_step)

  logging.info("Training %d steps from step %d: %d devices, %d processes, global batch %d.",
               training.num_steps, workdir.start_step, mesh.devices.size, jax.process_count(),
               opts.batch_size)
  try:
    result = skeleton.train(
        workdir, Checkpoints(workdir.checkpoint_dir, opts.checkpoints, functions.to_tree,
                             functions.from_tree, meta),
        init=functions.init,
        step_fn=lambda state, batch: training.step(state, batch, functions.step_rng),
        make_batches=make_batches, num_steps=training.num_steps, cadence=opts.cadence,
        evaluate=evaluate, hooks=_profiler(opts, workdir.path, workdir.start_step),
        on_start=on_start, examples_per_step=opts.batch_size)
  finally:
    stream.close()  # Closed by the loop once it runs; here for an error before it.
  if jax.process_index() == 0:
    logging.info("%s", summary_line(result, workdir.start_step, time.monotonic() - started,
                                    os.path.join(workdir.checkpoint_dir, str(result.step))))
  return result.metrics


def summary_line(result: loop.LoopResult, start_step: int, seconds: float,
                 checkpoint_path: str) -> str:
  """The line that ends a pretraining run: steps, wall time, last losses, kNN, checkpoint.

  Args:
    result: the loop's result.
    start_step: the step the run resumed from (0: a new run).
    seconds: wall time of this run of the program.
    checkpoint_path: the newest checkpoint's directory.

  Returns:
    e.g. 'Pretraining finished: steps 1-6 of 6 in 18 s; loss -0.0411 (siam 0.0063,
    mix -0.0886), z_std 0.1242; kNN top-1 23.50%; newest checkpoint: DIR/checkpoints/6.'
  """
  m = result.metrics
  parts = [f"Pretraining finished: steps {start_step + 1}-{result.step} of {result.step} in "
           f"{progress.format_seconds(seconds)}"]
  if "loss" in m:
    terms = ", ".join(f"{name} {m[key]:.4f}" for name, key in (("siam", "loss_siam"),
                                                               ("mix", "loss_mix")) if key in m)
    parts.append(f"loss {m['loss']:.4f}" + (f" ({terms})" if terms else "")
                 + (f", z_std {m['z_std']:.4f}" if "z_std" in m else ""))
  if "knn_top1" in result.evaluation:
    parts.append(f"kNN top-1 {result.evaluation['knn_top1']:.2f}%")
  parts.append(f"newest checkpoint: {checkpoint_path}.")
  return "; ".join(parts)
