r"""The compiled pretraining step with parts of the model swapped: memory and module counts.

  JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 python benchmarks/step_module_variants.py \
      --topology=h100x1 --variant=ours [--recipe=cifar10] [--depth=D --batch=B --image=S]

Compiles the real bf16 pretraining step (configs/imagenet.py, or --recipe's;
planning.planner.plan_and_compile) for a topology, deviceless (a GPU topology needs
requirements-gpu.txt), and prints the plan's memory and counts read from the
compiled module: the convolution custom calls by result and operand dtypes,
float32 values of at least 2^20 elements in the entry computation, kernels
(entry fusions, custom calls, copies, ...) and the bytes they read and write
(a traffic estimate: a deviceless GPU compile reports no cost analysis),
converts, transposes, fusions and all-reduces by dtype. The figures of
docs/performance.md, section 7. Variants, swapped in this process only:
  ours       the model as it is;
  old        the convolution weight gradient as a float32-output convolution
             (models/conv.py before its bf16 partials);
  twopassbn  ViewBatchNorm's statistics in two passes (the mean, then the mean
             squared deviation from it), its VJP unchanged;
  onepassbn  ViewBatchNorm's variance as E[x^2] - E[x]^2, its VJP unchanged;
  autodiffbn ViewBatchNorm in two passes with the VJP left to autodiff;
  jaxrelu    jax.nn.relu instead of models/activation.py's relu;
  stockbn    ViewBatchNorm replaced by flax's nn.BatchNorm (statistics over
             all views together: not MixSiam);
  plain      the flax_plain network of benchmarks/train_step_bench.py
             (benchmarks/train_step_jax_rows.py's plain_network).
--recipe=cifar10 compiles the CIFAR recipe's step (configs/cifar10.py: ResNet-18,
CIFAR stem, 32 px, batch 512) instead of ImageNet's ResNet-50.
"""
import argparse
import collections
import os
import pathlib
import re
import sys
import time
import types

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from configs import cifar10, imagenet  # noqa: E402  pylint: disable=g-import-not-at-top
from mixsiam_jax.run import cli  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = ("ours", "old", "twopassbn", "onepassbn", "autodiffbn", "jaxrelu", "stockbn", "plain")
RECIPES = {"imagenet": imagenet, "cifar10": cifar10}
_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "u8": 1, "pred": 1, "s8": 1}
_KERNEL_OPS = ("fusion", "custom-call", "copy", "transpose", "reduce", "convolution", "dot",
               "all-reduce", "all-reduce-start")


def two_pass_moments(x, axes):
  """The mean, then the mean squared deviation from it: two reads of ``x``."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  mean = x.mean(axes, keepdims=True)
  return mean, jnp.square(x - mean).mean(axes, keepdims=True)


def one_pass_moments(x, axes):
  """E[x] and E[x^2] - E[x]^2 (clipped at 0), as flax's nn.BatchNorm by default."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  mean = x.mean(axes, keepdims=True)
  return mean, jnp.maximum(jnp.square(x).mean(axes, keepdims=True) - jnp.square(mean), 0.0)


def _autodiff_view_batch_norm(x, scale, bias, num_views, epsilon, out_dtype, moments):
  """norm.view_batch_norm's forward in two passes, differentiated by autodiff."""
  del moments
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  grouped = x.astype(jnp.float32).reshape((-1, num_views) + x.shape[1:])
  mean, var = two_pass_moments(grouped, (0,) + tuple(range(2, grouped.ndim - 1)))
  y = (grouped - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
  return y.reshape(x.shape).astype(out_dtype), mean, var


def swap_in(variant: str, shape: types.SimpleNamespace) -> None:
  """Replaces parts of the model modules for ``variant`` (this process only)."""
  # Deferred: main() imports JAX first, after JAX_SKIP_CUDA_CONSTRAINTS_CHECK is set.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import recipe  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.models import conv, heads, norm, resnet  # pylint: disable=g-import-not-at-top
  if variant == "old":
    conv._WEIGHT_GRADS["xla"] = conv._xla_weight_grad  # pylint: disable=protected-access
  elif variant in ("twopassbn", "onepassbn"):
    class SwappedMoments(norm.ViewBatchNorm):
      moments: norm.Moments = two_pass_moments if variant == "twopassbn" else one_pass_moments

    resnet.ViewBatchNorm = heads.ViewBatchNorm = SwappedMoments
  elif variant == "autodiffbn":
    norm.view_batch_norm = _autodiff_view_batch_norm
  elif variant == "jaxrelu":
    resnet.relu = heads.relu = jax.nn.relu
  elif variant == "stockbn":
    class StockBatchNorm(norm.ViewBatchNorm):
      """flax's BatchNorm behind ViewBatchNorm's interface (its attributes)."""

      @nn.compact
      def __call__(self, x, train, num_views=1):
        del num_views
        return nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                            epsilon=self.epsilon, use_scale=self.use_scale,
                            use_bias=self.use_bias, scale_init=self.scale_init,
                            dtype=self.dtype)(x)

    resnet.ViewBatchNorm = heads.ViewBatchNorm = StockBatchNorm
  elif variant == "plain":
    # Only the 'plain' variant needs the sibling module (train_step_bench's JAX rows).
    import train_step_jax_rows  # pylint: disable=g-import-not-at-top
    recipe.models.MixSiamNetwork = lambda model, platform: train_step_jax_rows.plain_network(shape)


def _num_bytes(shape: str) -> int:
  total = 0
  for dtype, dims in re.findall(r"(bf16|f32|s32|u32|u8|pred|f16|s8)\[([\d,]*)\]", shape):
    count = 1
    for d in dims.split(","):
      count *= int(d) if d else 1
    total += count * _BYTES[dtype]
  return total


def module_counts(hlo: str) -> dict:
  """Counts of a compiled module's text (see the module docstring)."""
  types_of = {}
  for line in hlo.splitlines():
    match = re.match(r"\s*(?:ROOT )?%(\S+) = \(?(\w+)\[", line)
    if match:
      types_of[match.group(1)] = match.group(2)
  convolutions = collections.Counter()
  for line in hlo.splitlines():
    target = re.search(r'custom_call_target="([^"]+)"', line)
    if target and "conv" in target.group(1).lower():
      result = re.search(r"= \(?(\w+)\[", line).group(1)
      operands = line.split("custom-call(")[1].split(")")[0].split(",")
      convolutions[(target.group(1), result,
                    tuple(types_of.get(o.strip().lstrip("%"), "?") for o in operands))] += 1
  entry = hlo[hlo.index("ENTRY "):]
  entry = entry[:entry.index("\n}")]
  large_f32 = 0
  for line in entry.splitlines():
    match = re.match(r"\s*%\S+ = f32\[([\d,]+)\]", line)
    if match and _num_bytes(f"f32[{match.group(1)}]") >= 4 * 2**20:
      large_f32 += 1
  shapes, kernels, touched = {}, 0, 0
  for line in entry.splitlines()[1:]:
    match = re.match(r"\s*(?:ROOT )?%(\S+) = (.+?) ([\w-]+)\((.*)", line)
    if not match:
      continue
    name, shape, op, rest = match.groups()
    shapes[name] = shape
    if op in _KERNEL_OPS:
      kernels += 1
      operands = re.findall(r"%([\w.-]+)", rest.split("), ")[0])
      touched += _num_bytes(shape) + sum(_num_bytes(shapes.get(o, "")) for o in operands)
  return {
      "convolutions": {f"{t}: {r} ({', '.join(o)})": c
                       for (t, r, o), c in sorted(convolutions.items())},
      "f32_values_of_2^20_elements_or_more": large_f32, "kernels": kernels,
      "kernel_bytes_read_and_written_gib": touched / 2**30,
      "converts": len(re.findall(r"= \w+\[[^\]]*\]\{[^}]*\} convert\(", hlo)),
      "transposes": hlo.count(" transpose("), "fusions": len(re.findall(r"fusion\(", hlo)),
      "all_reduces_by_dtype": dict(collections.Counter(
          re.findall(r"= \(?(\w+)\[[^\]]*\][^=]*? all-reduce(?:-start)?\(", hlo)))}


def main():
  """Compiles one --variant for --topology and prints its memory and kernel counts."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="h100x1")
  parser.add_argument("--variant", default="ours", choices=VARIANTS)
  parser.add_argument("--recipe", default="imagenet", choices=sorted(RECIPES))
  parser.add_argument("--depth", type=int, help="ResNet depth (default: the recipe's)")
  parser.add_argument("--batch", type=int, help="global batch (default: the recipe's)")
  parser.add_argument("--image", type=int, help="image size (default: the recipe's)")
  parser.add_argument("--remat", action="store_true")
  args = parser.parse_args()
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  # After JAX_SKIP_CUDA_CONSTRAINTS_CHECK is set; the package after jax_platforms is.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  cli.start_jax()
  from mixsiam_jax.planning import planner, topologies  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.options import programs
  config = RECIPES[args.recipe].get_config()
  config.model.depth = args.depth or config.model.depth
  config.batch_size = args.batch or config.batch_size
  config.image_size = args.image or config.image_size
  config.half_precision, config.model.remat = True, args.remat
  m = config.model
  swap_in(args.variant, types.SimpleNamespace(
      dtype="bfloat16", depth=m.depth, width=m.width, stem=m.stem, image_size=config.image_size,
      projector_layers=m.projector_layers, projector_dim=m.projector_dim,
      predictor_hidden_dim=m.predictor_hidden_dim))
  started = time.time()
  opts = programs.pretrain_options(config)
  plan, _, compiled = planner.plan_and_compile(opts, topologies.devices_for(args.topology))
  print(f"variant {args.variant}, {args.recipe} recipe, depth {m.depth}, batch {config.batch_size}, "
        f"{config.image_size} px, {args.topology}: compiled in {time.time() - started:.0f} s")
  print("memory GiB: " + ", ".join(f"{k} {v / 2**30:.3f}" for k, v in plan["memory"].items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)))
  if compiled is not None:
    for key, value in module_counts(compiled.as_text()).items():
      print(f"{key}: {value}")


if __name__ == "__main__":
  cli.run_tool(main)
