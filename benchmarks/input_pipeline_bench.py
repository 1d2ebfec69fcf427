r"""Examples/s of the two-view training pipeline: ours (tf.data + JAX) vs official SimSiam (torchvision).

CIFAR-sized (CIFAR-10 as JPEG folders, 32 px, no blur):

  python benchmarks/input_pipeline_bench.py --folder=/tmp/cifar10/train --image_size=32 \
      --torch_python=torchvenv/bin/python

ImageNet-sized (real photographs at 400-500 px cropped to 224, blur p=0.5): the
colour sample photographs that scikit-image ships, randomly cropped, flipped and
rescaled (longer side 400-500 px) into --num_files JPEGs spread over
--num_classes class folders in a temporary folder (removed afterwards):

  pip install scikit-image   # only for the sample files (this interpreter or --torch_python's)
  python benchmarks/input_pipeline_bench.py --imagenet --torch_python=torchvenv/bin/python

Rows printed (examples/s; one example = two views; our rows alternate over --repeats
rounds, each timed for at least 4 s, and each reports its best round):
  * torchvision: ImageFolder + the SimSiam TwoCropsTransform (RandomResizedCrop,
    RandomApply(ColorJitter) p=0.8, RandomGrayscale 0.2, [GaussianBlur p=0.5 for
    ImageNet], flip, ToTensor, Normalize), DataLoader with one worker per core.
    It runs in a separate interpreter (torch is not a project dependency) and is
    skipped with a message when missing.
  * decode_only: read + decode of every file (decode.decode_image), nothing else:
    the host's floor.
  * ours_host_resize: create_pretrain_dataset with crop + resize + flip on the host
    (data.resize_on_device=False), what the host pays when the photometric ops run
    on an accelerator.
  * ours: create_pretrain_dataset with data.resize_on_device=True: decode, the crop
    windows and flips, the image in a --canvas_size canvas; the device crops,
    resizes and flips (timed separately on this CPU: the line after the rows).
  * ours_host_resize + photometric jitted on this CPU: every batch also goes through
    photometric.device_photometric_augment on this same CPU (no accelerator here, so
    the host's cores do both halves).
  * all on host: colour jitter, grayscale and blur in tf.data too.
Our rows give examples/s and examples per CPU-second of this process (all its
threads: examples/s per core while the pipeline keeps the cores busy). The output
ends with two lines, ratios of examples per CPU-second (robust to other processes'
load on a shared machine): 'ratio ours / decode_only: X.XX' and
'ratio ours / ours_host_resize: X.XX'. --rows picks our rows.
Then (unless --step=False) how many examples/s the jitted MixSiam train step
(train.make_train_step, fwd+bwd+update, three views, photometric ops inside)
consumes on this CPU: CIFAR ResNet-18 width 64, batch 128, 32 px by default,
median of --step_reps steps after compilation, and whether each pipeline keeps
up. Same files, same cores. Not a test.
"""
import argparse
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from mixsiam_jax.run import cli  # noqa: E402
# Before mixsiam_jax.data imports TensorFlow: its start-up notices dropped, the GPUs hidden.
cli.import_tensorflow()
from configs import cifar10, imagenet  # noqa: E402
from mixsiam_jax import device_crops, models, optim, sharding, train  # noqa: E402
from mixsiam_jax.data import decode, pipeline, sources  # noqa: E402
from mixsiam_jax.options import programs
from mixsiam_jax.photometric import device_photometric_augment  # noqa: E402
from pipeline_bench_files import bench_torch, find_sample_dir, write_imagenet_like  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

def paper_options() -> programs.PretrainOptions:
  """The CIFAR recipe's options: SimSiam's colour jitter and grayscale, MixSiam's method."""
  return programs.pretrain_options(cifar10.get_config())


def photometric_options(blur: float):
  """SimSiam's photometric augmentation with Gaussian blur of probability ``blur``."""
  return dataclasses.replace(paper_options().photometric, blur_prob=blur)


def _decode_only(folder, batch_size):
  """Read + decode of every file in a seeded order, nothing else: the host's floor."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (after cli.import_tensorflow)
  source = sources.open_source(f"folder:{folder}", "train")
  log = decode.BadImageLog()
  n = source.info.num_examples

  def read_decode(k):
    data, _, name = source.fetch(tf.random.experimental.index_shuffle(
        k % n, seed=tf.constant([0, 0], tf.int64), max_index=n - 1))
    image, ok = decode.decode_image(data, name, log)
    return tf.shape(image), ok

  ds = tf.data.Dataset.counter(dtype=tf.int64).map(read_decode, num_parallel_calls=-1,
                                                   deterministic=True)
  return ds.batch(batch_size).prefetch(-1)


def bench_ours(folder, size, n, mode, blur, batch_size, canvas_size, warmup=3, min_seconds=4.0):
  """(examples/s, examples per CPU-second of this process) of a host pipeline (an example
  is two views), timed the same way for every mode:
  at least ``n`` examples and ``min_seconds`` (a fast row timed for one second on a
  shared machine is at the mercy of whatever else runs in that second).

  Modes: 'decode_only' (read + decode), 'ours' (decode, windows, canvas:
  resize on the device), 'ours_host_resize' (crop + resize + flip on the host),
  'device' (ours_host_resize + the photometric ops jitted on this CPU),
  'host_all' (everything in tf.data).
  """
  photometric = photometric_options(blur)
  if mode == "decode_only":
    ds = _decode_only(folder, batch_size)
  else:
    options = pipeline.TrainDataOptions(
        dataset=f"folder:{folder}", split="train", global_batch_size=batch_size,
        image_size=size, seed=0, crop_scale=(0.2, 1.0), skip_bad_images=True,
        canvas_size=canvas_size if mode == "ours" else 0,
        host_photometric=photometric if mode == "host_all" else None)
    ds = pipeline.create_pretrain_dataset(options, process_index=0, process_count=1)

  def device_part(i, views):  # [B, 2, S, S, 3] uint8 -> dispatched (async) jax.Array.
    flat = views.reshape((-1,) + views.shape[2:])
    return device_photometric_augment(jax.random.fold_in(jax.random.key(0), i), flat,
                                              photometric)

  it = ds.as_numpy_iterator()
  for i in range(warmup):  # Fills tf.data's buffers and compiles the device part.
    batch = next(it)
    if mode == "device":
      device_part(i, batch["views"]).block_until_ready()
  start, cpu_start, seen, pending = time.time(), time.process_time(), 0, None
  i = warmup
  while seen < n or time.time() - start < min_seconds:
    batch = next(it)  # The host part of the next batch overlaps the device part.
    if pending is not None:
      pending.block_until_ready()
    if mode == "device":
      pending = device_part(i, batch["views"])
    seen += len(batch["index"] if mode != "decode_only" else batch[1])
    i += 1
  if pending is not None:
    pending.block_until_ready()
  rate = seen / (time.time() - start)
  per_cpu_second = seen / (time.process_time() - cpu_start)
  del it, ds
  gc.collect()
  return rate, per_cpu_second


def bench_device_crops(batch_size, size, canvas_size, reps=5):
  """Seconds per batch of device_crops.crop_resize_flip jitted on this CPU (median of reps)."""
  rs = np.random.RandomState(0)
  canvas = rs.randint(0, 256, (batch_size, canvas_size, canvas_size, 3)).astype(np.uint8)
  side = min(canvas_size, int(canvas_size * 0.9))
  windows = np.tile(np.array([0, 0, side, side], np.float32), (batch_size, 2, 1))
  flip = rs.rand(batch_size, 2) < 0.5
  fn = jax.jit(device_crops.crop_resize_flip, static_argnums=3)
  fn(canvas, windows, flip, size).block_until_ready()
  times = []
  for _ in range(reps):
    start = time.time()
    fn(canvas, windows, flip, size).block_until_ready()
    times.append(time.time() - start)
  return float(np.median(times))


def bench_train_step(depth, width, batch_size, image_size, reps, blur):
  """Examples/s the jitted MixSiam train step consumes on this machine (median of reps)."""
  paper = paper_options()
  stem = "cifar" if image_size <= 64 else "imagenet"
  mesh = sharding.create_mesh(jax.devices()[:1])
  # The dtype and convolution main.py would pick for this machine's devices.
  network = models.MixSiamNetwork(
      dataclasses.replace(paper.model, depth=depth, width=width, stem=stem,
                          projector_layers=2 if stem == "cifar" else 3),
      sharding.mesh_platform(mesh))
  schedule = optim.cosine_schedule(0.03 * batch_size / 256, 1000)
  tx = optim.create_pretrain_optimizer(schedule=schedule, peak_lr=0.03 * batch_size / 256,
                                       weight_decay=5e-4)
  state = train.create_train_state(jax.random.key(0), network, tx, image_size=image_size,
                                   mesh=mesh)
  step = train.jit_train_step(
      train.make_train_step(schedule, paper.method, photometric_options(blur)), mesh)
  rs = np.random.RandomState(0)
  batch = sharding.global_batch(
      {"views": rs.randint(0, 256, (batch_size, 2, image_size, image_size, 3)).astype(np.uint8)},
      mesh)
  rng = jax.random.key(1)
  start = time.time()
  state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  compile_s = time.time() - start
  times = []
  for _ in range(reps):
    start = time.time()
    state, metrics = step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    times.append(time.time() - start)
  return batch_size / float(np.median(times)), float(np.median(times)), compile_s


def _time_our_rows(args, folder, size, num, blur, batch, canvas_size, torch_ips):
  """Times --rows over --repeats rounds and prints them; returns (examples/s, per CPU-second)."""
  names = {"decode_only": "decode_only: read + decode (the host's floor)",
           "ours": f"ours: decode + windows + {canvas_size} px canvas",
           "ours_host_resize": "ours_host_resize: crop + resize + flip on host",
           "device": "ours_host_resize + photometric jitted on this CPU",
           "host_all": "all on host (photometric in tf.data too)"}
  modes = [m for m in args.rows.split(",") if m]
  for mode in modes:
    if mode not in names:
      raise SystemExit(f"--rows: unknown row {mode!r}; choose from {', '.join(names)}")
  # Rows alternate over --repeats rounds and each keeps its best round. The ratios compare
  # examples per CPU-second (all threads of this process: examples/s per core when the
  # pipeline keeps the cores busy, as these do): on a shared machine other processes'
  # load moves examples/s from one second to the next, far less the CPU time per example.
  rates, per_cpu = {}, {}
  for _ in range(args.repeats):
    for mode in modes:
      rate, cpu_rate = bench_ours(folder, size, num, mode, blur, batch, canvas_size)
      rates[mode] = max(rates.get(mode, 0.0), rate)
      per_cpu[mode] = max(per_cpu.get(mode, 0.0), cpu_rate)
  print(f"  {'(examples/s, examples per CPU-second)':58s}")
  for mode in modes:
    ratio = f"   ratio {rates[mode] / torch_ips:5.2f}x" if torch_ips else ""
    print(f"  {names[mode]:58s}{rates[mode]:8.0f}{per_cpu[mode]:8.0f}{ratio}")
  return rates, per_cpu


def _parse_args():
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--folder", help="PATH/<class>/<image> (CIFAR-sized run).")
  parser.add_argument("--imagenet", action="store_true",
                      help="ImageNet-sized run on scikit-image sample photos (ignores --folder).")
  parser.add_argument("--sample_dir", default="",
                      help="scikit-image's data folder (default: found via this or --torch_python).")
  parser.add_argument("--num_files", type=int, default=3000)
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--image_size", type=int, default=0, help="Default 32, 224 with --imagenet.")
  parser.add_argument("--num", type=int, default=0,
                      help="Examples timed per pipeline (default 10000, 1536 with --imagenet).")
  parser.add_argument("--batch_size", type=int, default=0, help="Default 256, 128 with --imagenet.")
  parser.add_argument("--blur_prob", type=float, default=-1,
                      help="Default 0 (CIFAR recipe), 0.5 with --imagenet.")
  parser.add_argument("--torch_python", default=sys.executable,
                      help="interpreter with torch and torchvision (default: this one)")
  parser.add_argument("--canvas_size", type=int, default=0,
                      help="Canvas of the 'ours' row (default: the recipe's, 32 or 512 with "
                           "--imagenet).")
  parser.add_argument("--rows", default="decode_only,ours_host_resize,ours,device,host_all",
                      help="Our pipeline rows to time, in this order.")
  parser.add_argument("--repeats", type=int, default=3,
                      help="Rounds over the rows; each row reports its best round.")
  parser.add_argument("--step", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
  parser.add_argument("--step_depth", type=int, default=18)
  parser.add_argument("--step_width", type=int, default=64)
  parser.add_argument("--step_batch", type=int, default=128)
  parser.add_argument("--step_image", type=int, default=32)
  parser.add_argument("--step_reps", type=int, default=5)
  return parser.parse_args()


def main():
  """Times the input pipelines (ours and torchvision's) and, with --step, the train step."""
  args = _parse_args()
  size = args.image_size or (224 if args.imagenet else 32)
  num = args.num or (1536 if args.imagenet else 10000)
  batch = args.batch_size or (128 if args.imagenet else 256)
  blur = args.blur_prob if args.blur_prob >= 0 else (0.5 if args.imagenet else 0.0)
  canvas_size = args.canvas_size or (imagenet.get_config() if args.imagenet
                                     else cifar10.get_config()).data.canvas_size
  cores = os.cpu_count()
  tmp = None
  try:
    if args.imagenet:
      sample_dir = args.sample_dir or find_sample_dir([sys.executable, args.torch_python])
      if not sample_dir:
        raise SystemExit("scikit-image not found; `pip install scikit-image` into --torch_python's "
                         "venv (or pass --sample_dir=.../skimage/data)")
      tmp = tempfile.mkdtemp(prefix="imagenet_like_")
      start = time.time()
      n_src, total = write_imagenet_like(sample_dir, tmp, args.num_files, args.num_classes)
      folder = tmp
      print(f"wrote {args.num_files} JPEGs ({total / args.num_files / 1024:.0f} KiB mean, longer "
            f"side 400-500 px) from {n_src} scikit-image photos into {args.num_classes} classes "
            f"in {time.time() - start:.0f} s")
    elif args.folder:
      folder = args.folder
    else:
      raise SystemExit("--folder is required without --imagenet")

    torch_ips, msg = bench_torch(args.torch_python, folder, size, num, blur, batch)
    print(f"{cores} cores, {folder}, image_size {size}, blur_prob {blur}, batch {batch}, "
          f"{num} examples timed (examples/s; each example = two views)")
    print(f"  {'torchvision (official SimSiam, %d workers)' % cores:58s}"
          + (f"{torch_ips:8.0f}" if torch_ips else msg))
    rates, per_cpu = _time_our_rows(args, folder, size, num, blur, batch, canvas_size,
                                    torch_ips)
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)

  if args.step:
    ips, sec, compile_s = bench_train_step(args.step_depth, args.step_width, args.step_batch,
                                           args.step_image, args.step_reps, 0.0)
    print(f"train step (ResNet-{args.step_depth} width {args.step_width}, batch "
          f"{args.step_batch}, {args.step_image} px, 3 views, fwd+bwd+update, photometric "
          f"inside): {sec:.2f} s/step median of {args.step_reps} (compile {compile_s:.0f} s) "
          f"= {ips:.1f} examples/s")
    for mode, rate in rates.items():
      verdict = "faster" if rate > ips else "SLOWER"
      print(f"  pipeline '{mode}' {rate:.0f}/s is {verdict} than the step ({rate / ips:.1f}x)")
    if args.imagenet and args.step_image != size:
      print(f"  (the step is the {args.step_image}-px one; a {size}-px step is far slower still)")
  if "ours" in rates:
    seconds = bench_device_crops(batch, size, canvas_size)
    print(f"device part of 'ours' (crop + resize + flip of {batch} x 2 views from "
          f"{canvas_size}px canvases) jitted on this CPU: {seconds * 1e3:.0f} ms per batch "
          f"= {batch / seconds:.0f} examples/s")
  for other in ("decode_only", "ours_host_resize"):  # of examples per CPU-second
    if "ours" in rates and other in rates:
      print(f"ratio ours / {other}: {per_cpu['ours'] / per_cpu[other]:.2f}")


if __name__ == "__main__":
  cli.run_tool(main, jax_backend=True)
