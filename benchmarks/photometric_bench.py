r"""Images/s of the on-device photometric augmentation (photometric.device_photometric_augment).

  python benchmarks/photometric_bench.py                       # 32 images at 224 px, no blur
  python benchmarks/photometric_bench.py --image_size=32 --batch_size=512
  python benchmarks/photometric_bench.py --blur_prob=0.5       # the ImageNet recipe

SimSiam's colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.8 and grayscale
with probability 0.2 (and Gaussian blur with --blur_prob), on a batch of random
uint8 images, jitted, on the default JAX backend. One measurement is --calls
calls with a fresh key each; the figure is the median over --repeats
measurements after one untimed (compiling) call. Run by hand, never as a timed test.
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top  (light)


def main(argv=None):
  """Parses the flags, times the augmentation, prints images/s per measurement and the median."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--blur_prob", type=float, default=0.0)
  parser.add_argument("--calls", type=int, default=3, help="calls per measurement")
  parser.add_argument("--repeats", type=int, default=3, help="measurements; the median is printed")
  args = parser.parse_args(argv)

  # After the flags parse (--help loads nothing).
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import photometric  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.options import programs
  cli.start_jax()

  # SimSiam's colour jitter and grayscale (the CIFAR recipe's), with --blur_prob.
  paper = programs.pretrain_options(cifar10.get_config())
  options = dataclasses.replace(paper.photometric, blur_prob=args.blur_prob)
  images = jax.device_put(np.random.RandomState(0).randint(
      0, 256, (args.batch_size, args.image_size, args.image_size, 3)).astype(np.uint8))
  key = jax.random.key(0)
  print(f"backend={jax.default_backend()} cores={os.cpu_count()} jax={jax.__version__} "
        f"{args.batch_size} images at {args.image_size} px, blur_prob {args.blur_prob}; "
        f"load {os.getloadavg()[0]:.2f}", flush=True)
  jax.block_until_ready(photometric.device_photometric_augment(key, images, options))
  rates = []
  for r in range(args.repeats):
    start = time.perf_counter()
    for c in range(args.calls):
      out = photometric.device_photometric_augment(jax.random.fold_in(key, r * args.calls + c),
                                               images, options)
    jax.block_until_ready(out)
    rates.append(args.batch_size * args.calls / (time.perf_counter() - start))
  print("images/s per measurement: " + " ".join(f"{x:.1f}" for x in rates))
  print(f"median {statistics.median(rates):.1f} images/s; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  cli.run_tool(main)
