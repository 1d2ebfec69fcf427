r"""How much does summing the weight gradients across devices in bfloat16 cost in accuracy?

  python benchmarks/grad_allreduce_precision.py --replicas=8,64,256 --images=DIR/train

With a bfloat16 compute dtype, XLA all-reduces each weight gradient where it is
produced. Produced in bfloat16 (flax's default: the kernel is cast before the
op), the all-reduce adds bfloat16 numbers; with models/conv.py (the program's
choice) each device's bfloat16 partial is cast to float32 and the all-reduce
adds float32 numbers.
XLA:CPU promotes bfloat16 all-reduces to float32 internally, so simulated CPU
devices cannot show the difference; this script reproduces the arithmetic
instead: the per-device partial gradients of a small ResNet-18 MixSiam-style
loss (bfloat16 compute, one group of examples per replica, vmapped), then

  bf16 ring:     bf16 partials, summed in bfloat16 one replica after another
  bf16 tree:     bf16 partials, summed pairwise in bfloat16 (log2 R roundings)
  bf16 -> f32 (ours): bf16 partials, summed in float32 (rounded only locally)
  f32:           float32 partials, summed in float32

each against the float64 sum of the float32 partials. For scale, the last line
compares the whole float32-compute gradient with the bfloat16-compute one.
--images is a CIFAR-10 class-folder tree of JPEGs, DIR/train/<class>/<image>.jpg;
without it (or with fewer images than needed) the inputs are uniform noise, and
each JSON line says which ("inputs"). Prints one JSON line per replica count.
"""
import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import cifar10  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax import losses, models  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.options import programs  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.run import cli


def _images(count: int, size: int, folder: str) -> tuple:
  """``count`` CIFAR images in [0, 1] from a class folder tree, or noise without one.

  Returns:
    (images [count, size, size, 3] float32, "folder:PATH" or "uniform noise").
  """
  rng = np.random.default_rng(0)
  paths = sorted(pathlib.Path(folder).glob("*/*.jpg")) if folder else []
  paths = paths[::max(1, len(paths) // count)][:count]  # every class
  if len(paths) < count:
    return rng.uniform(size=(count, size, size, 3)).astype(np.float32), "uniform noise"
  return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32)
                   / 255.0 for p in paths]), f"folder:{folder}"


def _partials(net, variables, views):
  """Per-replica gradients [R, ...] of a SimSiam-style loss; views [R, b, 2, H, W, 3]."""
  def loss(params, group):
    out, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, group,
                       train=True, mutable=["batch_stats"])
    p, z = out["p"], out["z"]
    return losses.siamese_loss(p[:, 0], p[:, 1], z[:, 0], z[:, 1])
  return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(variables["params"], views)


def _ring(parts):
  total = parts[0]
  for part in parts[1:]:
    total = (total + part).astype(jnp.bfloat16)
  return total


def _tree(parts):
  while parts.shape[0] > 1:
    if parts.shape[0] % 2:
      parts = jnp.concatenate([parts, jnp.zeros_like(parts[:1])])
    parts = (parts[0::2] + parts[1::2]).astype(jnp.bfloat16)
  return parts[0]


def _error(tree, reference) -> float:
  """Relative l2 error over all parameters together."""
  num = sum(float(np.sum((np.asarray(a, np.float64) - b) ** 2))
            for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)))
  den = sum(float(np.sum(b ** 2)) for b in jax.tree.leaves(reference))
  return float(np.sqrt(num / den))


def _worst_leaf(tree, reference) -> float:
  return max(float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))
             for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)))


def measure(replicas: int, per_replica: int, width: int, size: int, folder: str) -> dict:
  """Errors of the four reductions for ``replicas`` partial gradients."""
  # The CIFAR recipe's model (ResNet-18, CIFAR stem, 2-layer projector) at ``width``.
  paper = programs.pretrain_options(cifar10.get_config())
  model = dataclasses.replace(paper.model, depth=18, width=width, stem="cifar", projector_layers=2,
                              projector_hidden_dim=4 * width, projector_dim=4 * width,
                              predictor_hidden_dim=width, conv_impl="xla")
  net16 = models.MixSiamNetwork(dataclasses.replace(model, half_precision=True), "cpu")
  net32 = models.MixSiamNetwork(dataclasses.replace(model, half_precision=False), "cpu")
  images, inputs = _images(replicas * per_replica, size, folder)
  noise = np.random.default_rng(1).normal(scale=0.1, size=images.shape).astype(np.float32)
  views = np.stack([images, images[:, :, ::-1] + noise], axis=1)  # two "augmentations"
  views = (views - 0.45) / 0.25
  views = jnp.asarray(views.reshape((replicas, per_replica) + views.shape[1:]))
  variables = jax.jit(lambda k: net32.init(k, views[0], train=True))(jax.random.key(0))
  part16 = _partials(net16, variables, views)  # float32 leaves, float32-accumulated
  exact = jax.tree.map(lambda p: np.asarray(p, np.float64).sum(0), part16)
  low = jax.tree.map(lambda p: p.astype(jnp.bfloat16), part16)
  rows = {
      "bf16_ring": _error(jax.tree.map(_ring, low), exact),
      "bf16_tree": _error(jax.tree.map(_tree, low), exact),
      "bf16_partials_f32_sum": _error(jax.tree.map(lambda p: p.astype(jnp.float32).sum(0), low),
                                      exact),
      "f32_partials_f32_sum": _error(jax.tree.map(lambda p: p.sum(0), part16), exact),
      "worst_leaf_bf16_ring": _worst_leaf(jax.tree.map(_ring, low), exact),
      "worst_leaf_f32": _worst_leaf(jax.tree.map(lambda p: p.sum(0), part16), exact),
  }
  full32 = jax.tree.map(lambda p: np.asarray(p, np.float64).sum(0),
                        _partials(net32, variables, views))
  rows["bf16_compute_vs_f32_compute"] = _error(exact, full32)
  return {"replicas": replicas, "per_replica_batch": per_replica, "width": width,
          "image_size": size, "inputs": inputs, "relative_l2_error": rows}


def main():
  """Prints one JSON line per replica count of --replicas."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--replicas", default="8,64,256")
  parser.add_argument("--per_replica_batch", type=int, default=4)
  parser.add_argument("--width", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=16)
  parser.add_argument("--images", default="",
                      help="class-folder tree of JPEGs, DIR/train (CIFAR-10 train); default: "
                      "uniform noise instead of images")
  args = parser.parse_args()
  for replicas in map(int, args.replicas.split(",")):
    print(json.dumps(measure(replicas, args.per_replica_batch, args.width, args.image_size,
                             args.images)), flush=True)


if __name__ == "__main__":
  cli.run_tool(main, jax_backend=True)
