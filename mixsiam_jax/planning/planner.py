r"""Compile the real pretraining step for a TPU slice or GPU host from any machine, and report.

  python -m mixsiam_jax.planning --config=configs/imagenet.py --topology=v5e:4x4 \
      --config.batch_size=4096
  python -m mixsiam_jax.planning --config=configs/imagenet.py --topology=v5e-16 \
      --config.batch_size=4096 --config.half_precision=false        # DOES NOT FIT
  JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 python -m mixsiam_jax.planning \
      --config=configs/imagenet.py --topology=h100x8 --max_batch --out=plan.json

The step is built by the pretraining program's own functions
(``programs.pretrain_options``, ``recipe.build_training``,
``train.abstract_train_state``) on a mesh of compile-only devices
(mixsiam_jax/planning/topologies.py), so dtype and convolutions are those the devices
get. Nothing runs: the report holds per-device memory against the chip's,
FLOPs, every collective, compile time and a step-time estimate (see
docs/accelerators.md for what a compile cannot tell). Exit status: 0 fits,
2 does not fit, 1 a usage error.
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
from absl import flags, logging
from ml_collections import config_flags

from mixsiam_jax import recipe, sharding, train
from mixsiam_jax.data import batch_format
from mixsiam_jax.errors import UserError
from mixsiam_jax.options import programs
from mixsiam_jax.options.programs import PretrainOptions
from mixsiam_jax.planning import costs, topologies
from mixsiam_jax.run import cli, library_noise

# (examples, classes) of the data sets the configs name; they set the schedule's
# length and the online probe's width, not the step's memory or cost.
KNOWN_DATASETS = {"tfds:imagenet2012": (1281167, 1000), "tfds:cifar10": (50000, 10),
                  "tfds:cifar100": (50000, 100)}
DEFAULT_UTILIZATION = 0.4
EXIT_DOES_NOT_FIT = 2


@dataclasses.dataclass(frozen=True)
class BuiltStep:
  """The jitted step and its unjitted function (FLOPs), abstract arguments, what makes its state."""
  step: Any
  step_function: Any
  args: Tuple[Any, Any, Any]
  num_params: int
  dtype: str
  conv_impl: str
  network: Any
  tx: Any


def _dataset_size(opts: PretrainOptions) -> Tuple[int, int]:
  if opts.data.dataset in KNOWN_DATASETS:
    return KNOWN_DATASETS[opts.data.dataset]
  # Elsewhere (folders) the step does not depend on the size: one step per epoch.
  return opts.batch_size, 0


def abstract_batch(batch_size: int, image_size: int, mesh: jax.sharding.Mesh,
                   canvas_size: int = 0) -> Dict[str, Any]:
  """What the pretraining input pipeline yields per step, as sharded abstract arrays.

  Args:
    batch_size: the global batch.
    image_size: side of the square views.
    mesh: the mesh the batch is sharded over (along its rows).
    canvas_size: 0 (views resized on the host) or the side of the canvases.

  Returns:
    batch_format.pretrain_batch_format's keys, shapes and dtypes as
    jax.ShapeDtypeStructs.
  """
  data = sharding.batch_sharded(mesh)
  return {key: jax.ShapeDtypeStruct(shape, dtype, sharding=data) for key, (shape, dtype)
          in batch_format.pretrain_batch_format(batch_size, image_size,
                                                canvas_size=canvas_size).items()}


def build_step(opts: PretrainOptions, mesh: jax.sharding.Mesh) -> BuiltStep:
  """The pretraining program's jitted step for ``opts`` on ``mesh``, with abstract inputs.

  Raises:
    UserError: a batch size that does not split over the mesh.
  """
  sharding.check_global_batch(opts.batch_size, mesh)
  num_examples, num_classes = _dataset_size(opts)
  training = recipe.build_training(opts, mesh, num_examples, num_classes)
  state = train.abstract_train_state(training.network, training.tx, image_size=opts.image_size,
                                     mesh=mesh)
  rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=sharding.replicated(mesh))
  batch = abstract_batch(opts.batch_size, opts.image_size, mesh,
                         opts.data.canvas_size if opts.data.resize_on_device else 0)
  platform = sharding.mesh_platform(mesh)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  return BuiltStep(training.step, training.step_function, (state, batch, rng), num_params,
                   opts.model.compute_dtype(platform), opts.model.conv_implementation(platform),
                   training.network, training.tx)


def _with(opts: PretrainOptions, batch_size: Optional[int], remat: Optional[bool]
          ) -> PretrainOptions:
  """``opts`` with the global batch size and model.remat replaced (None: kept)."""
  if batch_size is not None:
    opts = dataclasses.replace(opts, batch_size=batch_size)
  if remat is not None:
    opts = dataclasses.replace(opts, model=dataclasses.replace(opts.model, remat=remat))
  return opts


def plan_and_compile(opts: PretrainOptions, topology: topologies.Topology, *,
                     per_device_batch: Optional[int] = None, remat: Optional[bool] = None,
                     utilization: float = DEFAULT_UTILIZATION
                     ) -> Tuple[Dict[str, Any], Optional[BuiltStep], Any]:
  """Compiles the pretraining step of ``opts`` for ``topology`` and reports on it.

  Args:
    opts: from programs.pretrain_options.
    topology: from topologies.devices_for.
    per_device_batch: overrides opts.batch_size with this many per device.
    remat: overrides opts.model.remat.
    utilization: fraction of the chip's peak assumed by the step-time estimate.

  Returns:
    (plan, built step, compiled executable). The plan is a JSON-able dict whose
    'status' is 'fits', 'does_not_fit' or 'unknown' (no memory limit known for
    the devices); the executable is None when the step does not fit, and for
    devices of this machine it runs: ``compiled(state, batch, rng)``.

  Raises:
    UserError: a batch size that does not split over the devices.
  """
  num_devices = len(topology.devices)
  batch = None if per_device_batch is None else per_device_batch * num_devices
  opts = _with(opts, batch_size=batch, remat=remat)
  mesh = sharding.create_mesh(topology.devices)
  # A compile for a large slice takes minutes (a --max_batch search many): say what runs.
  logging.info("Compiling the pretraining step for %s (%d %s devices): global batch %d "
               "(%d per device), %d px, remat %s...", topology.name, num_devices,
               topology.devices[0].device_kind, opts.batch_size, opts.batch_size // num_devices,
               opts.image_size, opts.model.remat)
  built = build_step(opts, mesh)
  out = {"topology": topology.name, "platform": topology.platform, "num_devices": num_devices,
         "device_kind": topology.devices[0].device_kind,
         "num_processes": sharding.mesh_process_count(mesh), "batch_size": opts.batch_size,
         "per_device_batch": opts.batch_size // num_devices, "image_size": opts.image_size,
         "dtype": built.dtype, "conv_impl": built.conv_impl, "remat": opts.model.remat,
         "num_params": built.num_params, "jax_version": jax.__version__}
  start = time.perf_counter()
  try:
    compiled = built.step.lower(*built.args).compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    out.update(status="does_not_fit", error=lines[0][:400],
               compile_seconds=time.perf_counter() - start)
    _log_compiled(out)
    return out, built, None
  out["compile_seconds"] = time.perf_counter() - start
  hlo = compiled.as_text()
  out["memory"] = costs.memory(compiled, topology.usable_memory_bytes)
  out["status"] = {True: "fits", False: "does_not_fit", None: "unknown"}[out["memory"]["fits"]]
  _log_compiled(out)
  cost = costs.flops(compiled, built.step_function, built.args, num_devices,
                     topology.platform)
  if cost["per_device"]:
    cost["per_image"] = cost["per_device"] * num_devices / opts.batch_size
  out["flops"] = cost
  if opts.data.resize_on_device:
    out["device_crops"] = costs.device_crops_cost(
        opts.batch_size // num_devices, opts.image_size, opts.data.canvas_size)
  out["collectives"] = costs.collectives(hlo)
  out["program"] = costs.program_shape(hlo)
  # The chips' peaks are bf16 peaks: a float32 step has no estimate.
  if cost["per_device"] and topology.chip and built.dtype != "float32":
    seconds = cost["per_device"] / (topology.chip.peak_bf16_flops * utilization)
    out["step_time_estimate"] = {
        "seconds": seconds, "utilization": utilization,
        "peak_flops": topology.chip.peak_bf16_flops, "peak_source": topology.chip.source,
        "images_per_second": opts.batch_size / seconds,
        "note": "estimate from FLOPs and peak at the stated utilisation; not measured"}
  return out, built, compiled


def _log_compiled(plan: Dict[str, Any]) -> None:
  """One INFO line when a compile of plan_and_compile ends: its time and whether it fits."""
  status = {"fits": "fits", "does_not_fit": "does not fit",
            "unknown": "fits (no memory limit known)"}[plan["status"]]
  logging.info("Compiled for %s in %.0f s (%d per device, remat %s): %s.", plan["topology"],
               plan["compile_seconds"], plan["per_device_batch"], plan["remat"], status)


def max_batch(opts: PretrainOptions, topology: topologies.Topology, *,
              remat: bool, start: int, known: Optional[Dict[int, bool]] = None,
              report: Callable[[str], None] = lambda line: None) -> Dict[str, Any]:
  """The largest per-device batch whose step fits: powers of two, then bisection.

  Doubling (or halving) from ``start`` finds a fitting power of two and the next
  one that does not fit; bisection then narrows the gap to 1/8 of the fitting
  batch (multiples of 8 from batch 64 up), so the answer is within 12.5% below
  the true limit.

  Args:
    opts: the pretraining options.
    topology: the devices to compile for.
    remat: search with remat on or off.
    start: the per-device batch to start from.
    known: per-device batch -> fits, for batches already compiled with this
      ``remat`` (not compiled again).
    report: called with one line per compile (a search takes many minutes).

  Returns:
    {'remat', 'per_device_batch' (0: not even 1 fits), 'tried': [[batch, fits]]}.
  """
  tried: List[List[Any]] = []
  known = dict(known or {})

  def fits(batch: int) -> bool:
    if batch not in known:
      result = plan_and_compile(opts, topology, per_device_batch=batch, remat=remat)[0]
      known[batch] = result["status"] != "does_not_fit"
      report(f"  remat {remat}, {batch} per device: "
             f"{'fits' if known[batch] else 'does not fit'} "
             f"(compiled in {result.get('compile_seconds', 0):.0f} s)")
    tried.append([batch, known[batch]])
    return known[batch]

  batch = max(1, 2 ** (max(1, start).bit_length() - 1))
  if fits(batch):
    low, high = batch, None
    while high is None:
      if fits(low * 2):
        low *= 2
      else:
        high = low * 2
  else:
    high, low = batch, 0
    while high > 1 and low == 0:
      if fits(high // 2):
        low = high // 2
      else:
        high //= 2
  step = max(1, low // 8)
  while low and high - low > step:
    middle = (low + high) // 2 // step * step
    if middle <= low:
      break
    if fits(middle):
      low = middle
    else:
      high = middle
  return {"remat": remat, "per_device_batch": low, "tried": tried}


def max_batch_remats(values: List[str], topology: topologies.Topology) -> Tuple[bool, ...]:
  """The remat settings of a --max_batch search, checked against the topology.

  Args:
    values: the --max_batch_remat values ('false' and/or 'true').
    topology: the devices to compile for.

  Returns:
    The remat settings, in the given order.

  Raises:
    UserError: an unknown value, or devices without a memory limit (every batch
      would fit, so the search would never end).
  """
  if topology.usable_memory_bytes is None:
    raise UserError(f"--max_batch needs devices with a memory limit; --topology="
                    f"{topology.name} has none. Use a TPU or GPU topology.")
  names = {"false": False, "true": True}
  unknown = [v for v in values if v.lower() not in names]
  if unknown or not values:
    raise UserError(f"--max_batch_remat={','.join(values)}: use false, true or false,true.")
  return tuple(names[v.lower()] for v in values)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags (defined by the program only, so importing this module is inert)."""
  config_flags.DEFINE_config_file("config", None, "Pretraining config, e.g. configs/imagenet.py.",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, f"Devices to compile for: {topologies.HELP}.")
  flags.DEFINE_bool("max_batch", False, "Also search the largest per-device batch that fits, "
                    "with and without remat (one compile per try).")
  flags.DEFINE_list("max_batch_remat", ["false", "true"],
                    "With --max_batch: search without remat ('false'), with it ('true'), or both.")
  flags.DEFINE_float("utilization", DEFAULT_UTILIZATION,
                     "Fraction of peak FLOP/s assumed by the step-time estimate.")
  flags.DEFINE_string("out", None, "Write the plan as JSON here.")
  flags.mark_flags_as_required(["config", "topology"])


def plan_command(argv) -> int:
  """The command line's work once its flags have parsed; returns the exit status.

  Raises:
    UserError: unexpected arguments, a bad flag value or config (one line).
  """
  if len(argv) > 1:
    raise UserError(f"unexpected argument(s) {' '.join(argv[1:])}: every option is a flag "
                    "(see --help).")
  if FLAGS.topology != "local":
    # Compile-only devices need no runtime of this host but the CPU's; a GPU or TPU
    # runtime starting here would only search for hardware (and print about it).
    jax.config.update("jax_platforms", "cpu")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  cli.start_jax()
  # libtpu, loaded for a TPU topology, first looks for a TPU on this host and says so.
  with library_noise.start_notices_dropped(library_noise.TPU_SEARCH_NOTICES):
    topology = topologies.devices_for(FLAGS.topology)
  if not 0 < FLAGS.utilization <= 1:
    raise UserError(f"--utilization={FLAGS.utilization} must lie in (0, 1].")
  opts = programs.pretrain_options(FLAGS.config)
  remats = max_batch_remats(FLAGS.max_batch_remat, topology) if FLAGS.max_batch else ()
  result = plan_and_compile(opts, topology, utilization=FLAGS.utilization)[0]
  print(costs.summary(result), flush=True)
  if FLAGS.max_batch:
    start = result["per_device_batch"]
    known = {False: {}, True: {}}
    known[bool(result["remat"])][start] = result["status"] != "does_not_fit"
    result["max_batch"] = [max_batch(opts, topology, remat=r, start=start, known=known[r],
                                     report=lambda line: print(line, flush=True))
                           for r in remats]
    for row in result["max_batch"]:
      print(f"largest per-device batch that fits, remat {row['remat']}: "
            f"{row['per_device_batch']} (tried {row['tried']})", flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1)
  return EXIT_DOES_NOT_FIT if result["status"] == "does_not_fit" else 0


def main(argv):
  """absl's entry point: plan_command under cli.run_tool (one-line errors, exit status)."""
  cli.run_tool(lambda: plan_command(argv))

