r"""The JAX rows of benchmarks/train_step_bench.py: ours, ours_photo, flax_plain and bare.

build_jax compiles each requested row's step and returns a function that runs it
for n steps; plain_network is the flax_plain row's network of stock flax.linen
layers (benchmarks/step_module_variants.py builds its 'plain' variant from it).
jax, flax and the project's modules are imported inside the functions: the
benchmark sets XLA_FLAGS before jax is imported, and its torch worker imports
train_step_bench (so this module) in an interpreter that may lack JAX.
"""
import dataclasses
import time

import torch_reference  # the sibling module (this script's folder is on sys.path)


def build_jax(args):
  """Compiles the steps of the JAX rows in args.rows (ours, ours_photo, flax_plain, bare).

  Args:
    args: train_step_bench.parse_args's flags (shape, dtype, batch, rows).

  Returns:
    ({row: run_fn(n_steps)}, {row: {'compile_s', 'memory'}}); run_fn runs n
    steps and blocks until they finish.
  """
  # After main() sets XLA_FLAGS; never in the torch worker, whose interpreter may lack JAX.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import models, optim  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.options import programs
  from mixsiam_jax import sharding, train  # pylint: disable=g-import-not-at-top

  # The CIFAR recipe's method and photometric augmentation; its model at the flags' shape.
  paper = programs.pretrain_options(cifar10.get_config())
  mesh = sharding.create_mesh(jax.devices()[:1])
  model = dataclasses.replace(
      paper.model, depth=args.depth, width=args.width, stem=torch_reference.stem(args),
      projector_layers=torch_reference.projector_layers(args),
      projector_hidden_dim=args.projector_dim,
      projector_dim=args.projector_dim, predictor_hidden_dim=args.predictor_hidden_dim,
      half_precision=args.dtype == "bfloat16", remat=False, conv_impl=args.conv_impl)
  network = models.MixSiamNetwork(model, sharding.mesh_platform(mesh))
  sched = optim.cosine_schedule(0.05, 10_000)
  tx = optim.create_pretrain_optimizer(schedule=sched, peak_lr=0.05,
                                       weight_decay=args.weight_decay)
  rs = np.random.RandomState(0)
  host = {"views": rs.randint(0, 256, (args.batch_size, 2, args.image_size, args.image_size, 3))
          .astype(np.uint8)}
  batch = sharding.global_batch(host, mesh)
  rng = jax.random.key(0)
  photometric = dataclasses.replace(paper.photometric,
                                    blur_prob=0.5 if args.image_size >= 96 else 0.0)

  built, info = {}, {}
  for row in ("ours", "ours_photo", "flax_plain"):
    if row not in args.rows:
      continue
    net = plain_network(args) if row == "flax_plain" else network
    state = train.create_train_state(jax.random.key(0), net, tx,
                                     image_size=args.image_size, mesh=mesh)
    step = train.make_train_step(sched, paper.method,
                                 photometric if row == "ours_photo" else None)
    start = time.perf_counter()
    compiled = train.jit_train_step(step, mesh).lower(state, batch, rng).compile()
    info[row] = {"compile_s": time.perf_counter() - start,
                 "memory": _memory_analysis(compiled)}
    holder = {"state": state}

    def run(n, compiled=compiled, holder=holder):
      state = holder["state"]
      for _ in range(n):
        state, metrics = compiled(state, batch, rng)
      jax.block_until_ready((state, metrics))
      holder["state"] = state
    built[row] = run

  if "bare" in args.rows:
    built["bare"], info["bare"] = _build_bare(args, network, host["views"], mesh)
  return built, info


def _build_bare(args, network, host_views, mesh):
  """The bare row: plain jax.jit of value_and_grad + optax SGD, views precomputed on device.

  Traced in ``mesh``'s context, as train.jit_train_step traces ours, so the bf16
  convolutions take the same weight-gradient path (models/conv.py).

  Returns:
    (run_fn, {'compile_s', 'memory'}).
  """
  # After main() sets XLA_FLAGS; never in the torch worker, whose interpreter may lack JAX.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import augment, losses  # pylint: disable=g-import-not-at-top

  variables = network.init(jax.random.key(0),
                           jnp.zeros((1, 2, args.image_size, args.image_size, 3)), train=True)
  params, stats = variables["params"], variables["batch_stats"]
  bare_tx = optax.chain(optax.add_decayed_weights(args.weight_decay),
                        optax.sgd(0.05, momentum=0.9))
  opt_state = bare_tx.init(params)
  v = augment.normalize(jnp.asarray(host_views, jnp.float32) / 255.0)
  views = jnp.concatenate([v, 0.5 * (v[:, :1] + v[:, 1:])], axis=1)

  def bare_step(params, stats, opt_state, views):
    def loss_fn(params):
      out, upd = network.apply({"params": params, "batch_stats": stats}, views, train=True,
                               mutable=["batch_stats"])
      return losses.mixsiam_loss(out["p"], out["z"], lam=0.5)[0], upd["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = bare_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  def bare_step_in_mesh(*step_args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return bare_step(*step_args)

  start = time.perf_counter()
  compiled = jax.jit(bare_step_in_mesh).lower(params, stats, opt_state, views).compile()
  info = {"compile_s": time.perf_counter() - start, "memory": _memory_analysis(compiled)}
  holder = {"carry": (params, stats, opt_state)}

  def run_bare(n, compiled=compiled, holder=holder):
    carry = holder["carry"]
    for _ in range(n):
      *carry, loss = compiled(*carry, views)
    jax.block_until_ready(loss)
    holder["carry"] = tuple(carry)
  return run_bare, info


def plain_network(args):
  """The flax_plain row's network: stock flax.linen layers, the same shape as ours.

  torchvision's layout (the ResNet of --depth, --width and stem, the projector
  and predictor of the same widths) from nn.Conv, nn.Dense and nn.BatchNorm with
  their defaults and --dtype compute; all views go through as one batch, so the
  BatchNorm statistics are shared by the views.

  Args:
    args: the flags (or any namespace) with dtype, depth, width, stem,
      image_size, projector_layers, projector_dim and predictor_hidden_dim.

  Returns:
    The flax.linen module; it returns what train.make_train_step reads of
    MixSiamNetwork: {'z', 'p'} as [B, V, D] float32.
  """
  # After main() sets XLA_FLAGS; never in the torch worker, whose interpreter may lack JAX.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.models import RESNET_STAGES  # pylint: disable=g-import-not-at-top

  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  kind, stages = RESNET_STAGES[args.depth]

  def conv(x, features, kernel, stride, name):
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, dtype=dtype, name=name)(x)

  class PlainMixSiam(nn.Module):
    """Backbone, projector and predictor of stock layers (see plain_network)."""

    @nn.compact
    def __call__(self, views, train=True):
      bn = lambda name, **kw: nn.BatchNorm(use_running_average=not train, dtype=dtype,
                                           name=name, **kw)
      batch, num_views = views.shape[:2]
      x = views.reshape((batch * num_views,) + views.shape[2:]).astype(dtype)
      if torch_reference.stem(args) == "imagenet":
        x = nn.relu(bn("bn1")(conv(x, args.width, 7, 2, "conv1")))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      else:
        x = nn.relu(bn("bn1")(conv(x, args.width, 3, 1, "conv1")))
      for stage, count in enumerate(stages):
        for block in range(count):
          name, width = f"layer{stage + 1}_{block}", args.width * 2**stage
          stride = 2 if stage > 0 and block == 0 else 1
          convs = ([(width, 3, stride), (width, 3, 1)] if kind == "basic" else
                   [(width, 1, 1), (width, 3, stride), (width * 4, 1, 1)])
          y = x
          for i, (features, kernel, s) in enumerate(convs, start=1):
            y = bn(f"{name}_bn{i}")(conv(y, features, kernel, s, f"{name}_conv{i}"))
            y = nn.relu(y) if i < len(convs) else y
          if stride != 1 or x.shape[-1] != convs[-1][0]:
            x = bn(f"{name}_down_bn")(conv(x, convs[-1][0], 1, stride, f"{name}_down_conv"))
          x = nn.relu(y + x)
      h = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      for i in range(torch_reference.projector_layers(args) - 1):
        h = nn.Dense(args.projector_dim, use_bias=False, dtype=dtype, name=f"proj_fc{i + 1}")(h)
        h = nn.relu(bn(f"proj_bn{i + 1}")(h))
      h = nn.Dense(args.projector_dim, use_bias=False, dtype=dtype, name="proj_out")(h)
      z = bn("proj_out_bn", use_scale=False, use_bias=False)(h).astype(jnp.float32)
      q = nn.Dense(args.predictor_hidden_dim, use_bias=False, dtype=dtype, name="pred_fc1")(z)
      q = nn.relu(bn("pred_bn1")(q))
      p = nn.Dense(args.projector_dim, dtype=dtype, name="pred_fc2")(q).astype(jnp.float32)
      unflat = lambda a: a.reshape((batch, num_views) + a.shape[1:])
      return {"z": unflat(z), "p": unflat(p)}

  return PlainMixSiam()


def _memory_analysis(compiled) -> dict:
  """XLA's temp/argument/output sizes (MiB) of a compiled step; {} where not reported."""
  try:
    m = compiled.memory_analysis()
    return {"temp_mib": m.temp_size_in_bytes / 2**20,
            "argument_mib": m.argument_size_in_bytes / 2**20,
            "output_mib": m.output_size_in_bytes / 2**20}
  except Exception:  # pylint: disable=broad-except
    return {}
