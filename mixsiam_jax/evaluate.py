"""Evaluation of the representation.

Part 1 (this file's top, up to the "end of kNN core" marker): the kNN core.
Part 2 (below the marker): the evaluation programs that restore checkpoints.

The kNN classifier of the SimSiam-family monitors (Wu et al. 2018, "InstDist";
the ``knn_predict`` of the widely used SimSiam/MoCo CIFAR notebooks): features
are l2-normalised, the k most cosine-similar training examples vote for their
class with weight exp(similarity / temperature), and the class scores are the
summed weights.
"""
# ============================================================== kNN core
import functools
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixsiam_jax import augment
from mixsiam_jax.sharding import DATA_AXIS

# Default kNN temperature. 0.1 is what InstDist and the SimSiam-family kNN
# monitors use (Wu et al. 2018; the MoCo/SimSiam CIFAR demo's knn_t=0.1): cosine
# similarities lie in [-1, 1], so exp(sim / 0.1) spans e^20 and the closest
# neighbours dominate the vote while the other k - 1 still break ties. Much
# lower temperatures reduce it to 1-NN; much higher ones to an unweighted vote.
DEFAULT_TEMPERATURE = 0.1
DEFAULT_K = 200


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of ``x`` scaled to unit l2 norm (zero rows stay zero), in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _local_top_k(queries: jax.Array, bank: jax.Array, bank_labels: jax.Array,
                 bank_valid: jax.Array, k: int) -> Tuple[jax.Array, jax.Array]:
  """Top-k cosine similarities [q, k] of normalised queries in a bank, and their labels."""
  sim = jnp.einsum("qf,nf->qn", queries, bank, precision=jax.lax.Precision.HIGHEST)
  # Padded bank rows can never be neighbours; if fewer than k rows are valid
  # they are picked last and then carry weight exp(-inf) = 0.
  sim = jnp.where(bank_valid[None, :], sim, -jnp.inf)
  top_sim, top_idx = jax.lax.top_k(sim, k)
  return top_sim, bank_labels[top_idx]


def _chunk_scores(queries: jax.Array, bank: jax.Array, bank_labels: jax.Array,
                  bank_valid: jax.Array, num_classes: int, k: int, temperature: jax.Array,
                  mesh: Optional[Mesh]) -> jax.Array:
  """Class scores [chunk, num_classes] of one chunk of normalised queries."""
  if mesh is None:
    top_sim, top_labels = _local_top_k(queries, bank, bank_labels, bank_valid, k)
  else:
    # Two-stage global top-k: each device keeps the k best of its bank shard,
    # then the k best of the [chunk, devices * k] candidates are taken. A plain
    # top_k on a sharded axis makes XLA gather all of [chunk, N] on every device.
    local_k = min(k, bank.shape[0] // mesh.size)
    local = jax.shard_map(
        functools.partial(_local_top_k, k=local_k), mesh=mesh,
        in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
        out_specs=(P(None, DATA_AXIS), P(None, DATA_AXIS)))
    cand_sim, cand_labels = local(queries, bank, bank_labels, bank_valid)
    top_sim, pos = jax.lax.top_k(cand_sim, k)
    top_labels = jnp.take_along_axis(cand_labels, pos, axis=1)
  weights = jnp.exp(top_sim / temperature)
  # Labels outside [0, num_classes) (e.g. -1 for padding) one-hot to zeros.
  votes = jax.nn.one_hot(top_labels, num_classes, dtype=jnp.float32) * weights[..., None]
  return votes.sum(axis=1)


def _check_bank(num_train: int, mesh: Optional[Mesh]) -> None:
  if num_train == 0:
    raise ValueError("knn_predict: the training bank is empty; check the training split.")
  if mesh is not None and num_train % mesh.size:
    raise ValueError(f"knn_predict: {num_train} bank rows do not split over the {mesh.size} "
                     "devices of the mesh; pad the bank with shard_bank() (which also returns "
                     "the train_mask), or pass mesh=None.")


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "query_chunk", "mesh"))
def knn_predict(train_features: jax.Array, train_labels: jax.Array, query_features: jax.Array,
                *, num_classes: int, k: int = DEFAULT_K,
                temperature: float = DEFAULT_TEMPERATURE, query_chunk: int = 256,
                train_mask: Optional[jax.Array] = None,
                mesh: Optional[Mesh] = None) -> jax.Array:
  """Weighted kNN class scores of each query against a bank of training features.

  Features need not be normalised (this function does it). Memory is bounded
  by processing ``query_chunk`` queries at a time: the similarity matrix held
  at once is [query_chunk, N] (or [query_chunk, N / devices] per device with
  ``mesh``).

  Args:
    train_features: bank [N, F]; with ``mesh``, best passed sharded on its
      first axis over the mesh's 'data' axis (see shard_bank).
    train_labels: int labels [N].
    query_features: [Nq, F].
    num_classes: number of classes C.
    k: neighbours per query; capped at N.
    temperature: votes weigh exp(cosine / temperature). Default 0.1, as in the
      InstDist and SimSiam-family kNN monitors, so numbers compare with
      theirs: it makes the closest neighbours dominate the vote (a cosine
      gap of 0.1 is a factor e) while the rest of the k still break ties.
    query_chunk: queries per step of the sequential loop.
    train_mask: optional bool [N]; False rows (padding) are never neighbours.
    mesh: optional 1-D 'data' mesh; the bank is then processed shard by shard
      (N must be a multiple of the mesh size) with an exact global top-k.
      Without it the result is the same, but XLA may gather [query_chunk, N]
      similarities on every device.

  Returns:
    Scores [Nq, C] (float32): per class, the summed weights of the neighbours
    of that class.

  Raises:
    ValueError: for an empty bank, or one that does not split over ``mesh``.
  """
  num_train = train_features.shape[0]
  num_queries = query_features.shape[0]
  _check_bank(num_train, mesh)
  k = min(k, num_train)
  if train_mask is None:
    train_mask = jnp.ones((num_train,), bool)
  bank = l2_normalize(train_features)
  queries = l2_normalize(query_features)
  chunk = max(1, min(query_chunk, num_queries))
  padded = -(-num_queries // chunk) * chunk
  queries = jnp.pad(queries, ((0, padded - num_queries), (0, 0)))
  queries = queries.reshape(padded // chunk, chunk, queries.shape[-1])
  score_fn = functools.partial(
      _chunk_scores, bank=bank, bank_labels=train_labels.astype(jnp.int32),
      bank_valid=train_mask.astype(bool), num_classes=num_classes, k=k,
      temperature=jnp.asarray(temperature, jnp.float32), mesh=mesh)
  scores = jax.lax.map(score_fn, queries)
  return scores.reshape(padded, num_classes)[:num_queries]


def shard_bank(features: Any, labels: Any, mesh: Mesh
               ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Pads a host feature bank to a multiple of the mesh size and shards it by rows.

  Args:
    features: [N, F] on the host (the same full bank on every process).
    labels: int [N].
    mesh: 1-D mesh with a 'data' axis.

  Returns:
    (features [N', F], labels [N'], train_mask [N']) as jax.Arrays sharded on
    their first axis, N' = N rounded up to a multiple of mesh.size; padded rows
    have mask False and label -1.
  """
  features, labels = np.asarray(features, np.float32), np.asarray(labels, np.int32)
  pad = -len(features) % mesh.size
  mask = np.concatenate([np.ones(len(features), bool), np.zeros(pad, bool)])
  features = np.concatenate([features, np.zeros((pad,) + features.shape[1:], np.float32)])
  labels = np.concatenate([labels, np.full(pad, -1, np.int32)])
  rows = NamedSharding(mesh, P(DATA_AXIS))
  # Every process holds the whole bank: each device takes its own rows from it.
  place = lambda x: jax.make_array_from_callback(x.shape, rows, lambda idx: x[idx])
  return place(features), place(labels), place(mask)


def knn_accuracy(train_features: Any, train_labels: Any, query_features: Any, query_labels: Any,
                 *, num_classes: int, k: int = DEFAULT_K,
                 temperature: float = DEFAULT_TEMPERATURE, query_chunk: int = 256,
                 query_mask: Optional[Any] = None, train_mask: Optional[Any] = None,
                 mesh: Optional[Mesh] = None) -> Dict[str, float]:
  """Top-1 and top-5 accuracy of the weighted kNN classifier.

  Args:
    train_features, train_labels: the bank [N, F] and its int labels [N].
    query_features, query_labels: the evaluated examples [Nq, F], [Nq].
    num_classes, k, temperature, query_chunk, mesh: as in knn_predict.
    query_mask: optional bool [Nq]; False rows (padding) are not counted.
    train_mask: optional bool [N]; False rows are never neighbours.

  Returns:
    {'top1': float, 'top5': float}, fractions in [0, 1] of the unmasked
    queries (top-5 is top-C when there are fewer than 5 classes).

  Raises:
    ValueError: if no query is unmasked.
  """
  scores = knn_predict(train_features, train_labels, query_features, num_classes=num_classes,
                       k=k, temperature=temperature, query_chunk=query_chunk,
                       train_mask=train_mask, mesh=mesh)
  labels = jnp.asarray(query_labels).astype(jnp.int32)
  mask = (jnp.ones(labels.shape, bool) if query_mask is None
          else jnp.asarray(query_mask).astype(bool))
  top1, top5, count = _accuracy_counts(scores, labels, mask)
  count = int(count)
  if count == 0:
    raise ValueError("knn_accuracy: every query is masked out (query_mask is all False); "
                     "there is nothing to evaluate.")
  return {"top1": float(top1) / count, "top5": float(top5) / count}


@jax.jit
def _accuracy_counts(scores: jax.Array, labels: jax.Array, mask: jax.Array):
  """(#top-1 hits, #top-5 hits, #counted) over the unmasked rows."""
  _, top = jax.lax.top_k(scores, min(5, scores.shape[-1]))
  hits = top == labels[:, None]
  return (jnp.sum(hits[:, 0] & mask), jnp.sum(jnp.any(hits, axis=1) & mask), jnp.sum(mask))


@jax.jit
def _to_model_input(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 normalised with the ImageNet mean/std."""
  return augment.normalize(images.astype(jnp.float32) / 255.0)


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole global array on this host (gathered across processes if needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def extract_features(embed_fn: Callable[[jax.Array], jax.Array],
                     batches: Iterable[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray]:
  """Embeds every unmasked example of ``batches``.

  Args:
    embed_fn: jitted function from normalised float images [B, H, W, 3] to
      features [B, F] (e.g. the pooled backbone in inference mode).
    batches: iterable of {'image': uint8 [B, H, W, 3], 'label': int [B],
      'mask': bool [B] (False for padding; optional)}, global jax.Arrays
      sharded over the devices (or host arrays).

  Returns:
    (features float32 [N, F], labels int [N]) on the host, padded rows dropped,
    in the order of the batches. With several processes every process gets
    all rows.

  Raises:
    ValueError: if ``batches`` is empty.
  """
  features, labels = [], []
  for batch in batches:
    feats = embed_fn(_to_model_input(batch["image"]))
    mask = _to_host(batch["mask"]).astype(bool) if "mask" in batch else None
    feats, labs = _to_host(feats).astype(np.float32), _to_host(batch["label"])
    if mask is not None:
      feats, labs = feats[mask], labs[mask]
    features.append(feats)
    labels.append(labs)
  if not features:
    raise ValueError("extract_features: the batch iterator yielded no batches; check the "
                     "evaluation split and batch size.")
  return np.concatenate(features), np.concatenate(labels)

# ======================================================= end of kNN core


# ======================================================= evaluation programs
# Everything below reads a config (these are top-level programs, like
# pretrain.train_and_evaluate) or builds on the kNN core above.
import json  # noqa: E402  (kept with the programs they serve)
import os  # noqa: E402

import flax.linen as nn  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402
from absl import logging  # noqa: E402
from flax.training import train_state  # noqa: E402

from mixsiam_jax import checkpoint, input_pipeline, models, optim, sharding  # noqa: E402
from mixsiam_jax import workdir as workdir_lib  # noqa: E402

RESULTS_FILE = "results.json"


def make_embed_fn(network: nn.Module, mesh: Mesh) -> Callable[[Dict[str, Any], jax.Array], jax.Array]:
  """Jitted ``embed(variables, images) -> [B, F]``: pooled backbone features in inference mode.

  Args:
    network: a MixSiamNetwork.
    mesh: the data mesh; variables replicated, images sharded on the batch axis.

  Returns:
    The compiled function (float32 features, no gradient).
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)

  def embed(variables, images):
    feats = network.apply(variables, images, method=network.embed)
    return jax.lax.stop_gradient(feats)

  return jax.jit(embed, in_shardings=(rep, data), out_shardings=data)


def dataset_features(embed: Callable[[jax.Array], jax.Array], mesh: Mesh, dataset: str,
                     split: str, *, image_size: int, batch_size: int, transform: str
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Features and labels of a whole split with the evaluation transform.

  Args:
    embed: images -> features (see make_embed_fn, with the variables bound).
    mesh: the data mesh.
    dataset, split: as in input_pipeline.create_eval_dataset.
    image_size, batch_size, transform: evaluation transform options.

  Returns:
    (features [N, F], labels [N]) on the host.
  """
  sharding.check_global_batch(batch_size, mesh)
  ds = input_pipeline.create_eval_dataset(dataset, split, global_batch_size=batch_size,
                                          image_size=image_size, transform=transform)
  batches = sharding.prefetch_to_mesh(ds.as_numpy_iterator(), mesh, 2)
  return extract_features(embed, batches)


def make_knn_monitor(*, network: nn.Module, mesh: Mesh, train_dataset: str, train_split: str,
                     eval_dataset: str, eval_split: str, image_size: int, batch_size: int,
                     transform: str, k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE
                     ) -> Callable[[Any], Dict[str, float]]:
  """The kNN monitor of pretraining: bank = training split, queries = evaluation split.

  Args:
    network: the MixSiamNetwork being trained.
    mesh: the data mesh.
    train_dataset, train_split: the bank (evaluation transform, no augmentation).
    eval_dataset, eval_split: the queries.
    image_size, batch_size, transform: evaluation transform options.
    k, temperature: kNN options.

  Returns:
    ``monitor(variables) -> {'knn_top1', 'knn_top5'}`` (percent) for the
    network's variables {'params', 'batch_stats'}.
  """
  num_classes = input_pipeline.get_dataset_info(train_dataset, train_split).num_classes
  # Check the queries now too: a missing eval set must not surface only after training.
  input_pipeline.get_dataset_info(eval_dataset, eval_split)
  if num_classes < 1:
    raise ValueError(f"dataset={train_dataset} has no labels; the kNN monitor needs class "
                     "folders (set --config.eval_dataset= to turn it off).")
  embed_fn = make_embed_fn(network, mesh)

  def monitor(variables) -> Dict[str, float]:
    embed = functools.partial(embed_fn, variables)
    options = dict(image_size=image_size, batch_size=batch_size, transform=transform)
    bank, bank_labels = dataset_features(embed, mesh, train_dataset, train_split, **options)
    queries, query_labels = dataset_features(embed, mesh, eval_dataset, eval_split, **options)
    feats, labels, mask = shard_bank(bank, bank_labels, mesh)
    acc = knn_accuracy(feats, labels, queries, query_labels, num_classes=num_classes,
                       k=min(k, len(bank)), temperature=temperature, train_mask=mask, mesh=mesh)
    return {"knn_top1": 100.0 * acc["top1"], "knn_top5": 100.0 * acc["top5"]}

  return monitor


WEIGHT_FILE_SUFFIXES = (".pth", ".pth.tar", ".pt", ".npz")


class _Frozen:
  """A restored encoder: variables replicated on the mesh, never updated.

  ``pretrained`` is a pretraining workdir (newest checkpoint) or a state-dict
  file in torchvision / official SimSiam layout, whose architecture is
  ``file_model`` (depth, width, stem).
  """

  def __init__(self, pretrained: str, mesh: Mesh, file_model: Optional[Dict[str, Any]] = None):
    if pretrained.endswith(WEIGHT_FILE_SUFFIXES):
      self.variables, model = _load_weight_file(pretrained, mesh, dict(file_model or {}))
      self.step = 0
    else:
      tree, meta, self.step = checkpoint.restore_replicated(pretrained, mesh)
      if "model" not in meta:
        raise checkpoint.CheckpointError(
            f"pretrained={pretrained}: checkpoint step {self.step} has no model description in "
            "its metadata; was it written by mixsiam_jax's pretraining?")
      self.variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
      model = meta["model"]
    self.network = models.create_network(**model)
    self.feature_dim = models.ResNet(model["depth"], model["width"]).feature_dim
    self.pretrained = pretrained
    self._fingerprint = _fingerprint(self.variables)

  def check_unchanged(self) -> None:
    """The official linear-probe sanity check: the backbone is bit-identical to the checkpoint."""
    if _fingerprint(self.variables) != self._fingerprint:
      raise RuntimeError("the frozen backbone changed during evaluation; this is a bug.")


def _load_weight_file(path: str, mesh: Mesh, model: Dict[str, Any]
                      ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Backbone variables (replicated) and network options from a torchvision/SimSiam file."""
  from mixsiam_jax import weights  # pylint: disable=g-import-not-at-top
  params, batch_stats = weights.import_torch_state_dict(
      weights.load_state_dict_file(path), depth=model["depth"], width=model["width"],
      stem=model["stem"], include_heads=False)
  variables = jax.device_put({"params": {"backbone": params["backbone"]},
                              "batch_stats": {"backbone": batch_stats["backbone"]}},
                             sharding.replicated(mesh))
  # Evaluation uses the backbone only, so the heads' sizes are placeholders.
  return variables, dict(depth=model["depth"], width=model["width"], stem=model["stem"],
                         projector_layers=2, projector_hidden_dim=8, projector_dim=8,
                         predictor_hidden_dim=8)


def _fingerprint(tree: Any) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def _write_results(workdir: str, writer: Any, step: int, results: Dict[str, Any]) -> None:
  """Logs the numeric results at ``step`` and writes them all to results.json."""
  writer.write_scalars(step, {k: v for k, v in results.items() if isinstance(v, (int, float))})
  writer.flush()
  if jax.process_index() == 0:
    workdir_lib.atomic_write_text(os.path.join(workdir, RESULTS_FILE),
                                  json.dumps(results, indent=2, sort_keys=True))


def run_knn(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """The kNN program: restores ``config.pretrained`` and reports kNN top-1/top-5.

  Args:
    config: see configs/knn.py.
    workdir: where results.json, metrics.jsonl and config.json go (the
      pretraining workdir is only read).

  Returns:
    The results dict (also written to workdir/results.json).
  """
  mesh = sharding.create_mesh()
  # Check what is evaluated (checkpoint, then both data sets, which the monitor
  # checks when it is made) before creating anything in the workdir.
  frozen = _Frozen(config.pretrained, mesh, config.pretrained_model.to_dict())
  monitor = make_knn_monitor(
      network=frozen.network, mesh=mesh, train_dataset=config.dataset,
      train_split=config.train_split, eval_dataset=config.eval_dataset,
      eval_split=config.eval_split, image_size=config.image_size,
      batch_size=config.eval_batch_size, transform=config.data.eval_transform, k=config.knn.k,
      temperature=config.knn.temperature)
  workdir = workdir_lib.prepare_workdir(workdir)
  workdir_lib.save_config(workdir, json.loads(config.to_json_best_effort()), 0)
  results = monitor(frozen.variables)
  frozen.check_unchanged()
  results.update(pretrained=os.path.abspath(config.pretrained), pretrained_step=frozen.step,
                 k=config.knn.k, temperature=config.knn.temperature)
  writer = workdir_lib.create_writer(workdir, jax.process_index() == 0)
  _write_results(workdir, writer, frozen.step, results)
  writer.close()
  logging.info("kNN of %s (step %d): top-1 %.2f%%, top-5 %.2f%%.", config.pretrained,
               frozen.step, results["knn_top1"], results["knn_top5"])
  return results


# ----------------------------------------------------------------- linear probe
class ProbeState(train_state.TrainState):
  """The linear classifier's parameters and optimiser state."""


def _linear_head(num_classes: int) -> nn.Dense:
  # Official main_lincls.py: fc.weight ~ N(0, 0.01), fc.bias = 0.
  return nn.Dense(num_classes, kernel_init=nn.initializers.normal(0.01),
                  bias_init=nn.initializers.zeros)


def make_probe_step(embed_fn: Optional[Callable], mesh: Mesh) -> Callable:
  """``step(state, variables, batch) -> (state, metrics)`` for the linear classifier.

  Args:
    embed_fn: ``(variables, images) -> features`` to compute frozen features of
      augmented images inside the step, or None when batches carry features.
    mesh: the data mesh.

  Returns:
    The jitted step (probe state donated). batch is {'image' uint8 or
    'features' float, 'label' int}.
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)

  def step(state, variables, batch):
    if embed_fn is not None:
      features = embed_fn(variables, augment.normalize(batch["image"].astype(jnp.float32) / 255.0))
    else:
      features = batch["features"]
    features = jax.lax.stop_gradient(features)

    def loss_fn(params):
      logits = state.apply_fn({"params": params}, features)
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state.apply_gradients(grads=grads), {"probe_loss": loss, "probe_train_top1": accuracy}

  return jax.jit(step, in_shardings=(rep, rep, data), out_shardings=(rep, rep),
                 donate_argnums=(0,))


def _feature_batches(features: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                     start_step: int):
  """Endless shuffled batches of precomputed features; order is a function of (seed, step)."""
  n = len(features)
  steps_per_epoch = n // batch_size
  step = start_step
  while True:
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    idx = order[offset * batch_size:(offset + 1) * batch_size]
    yield {"features": features[idx], "label": labels[idx].astype(np.int32)}
    step += 1


def _probe_accuracy(head_fn, probe_params, features, labels) -> Dict[str, float]:
  logits = head_fn({"params": probe_params}, jnp.asarray(features))
  _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
  hits = np.asarray(top) == labels[:, None]
  return {"probe_top1": 100.0 * float(hits[:, 0].mean()),
          "probe_top5": 100.0 * float(hits.any(1).mean())}


def run_linear_probe(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """The linear-probe program: a linear classifier on frozen, pooled backbone features.

  Restores only params and BN statistics of the newest checkpoint of
  ``config.pretrained`` (any device layout), keeps the backbone in inference
  mode, trains the classifier with LARS (or SGD), checkpoints and resumes in
  ``workdir``, and reports top-1/top-5 on the evaluation split.

  Args:
    config: see configs/linear_probe.py.
    workdir: the probe's own directory (the pretraining workdir is only read).

  Returns:
    The results dict (also written to workdir/results.json).
  """
  mesh = sharding.create_mesh()
  sharding.check_global_batch(config.batch_size, mesh)
  # Check what is probed before creating anything in the workdir.
  frozen = _Frozen(config.pretrained, mesh, config.pretrained_model.to_dict())
  workdir = workdir_lib.prepare_workdir(workdir)
  config_dict = json.loads(config.to_json_best_effort())
  old = workdir_lib.read_config(workdir)
  if old is not None:
    workdir_lib.check_resume_config(old, config_dict)
  info = input_pipeline.get_dataset_info(config.dataset, config.train_split)
  if info.num_classes < 1:
    raise ValueError(f"dataset={config.dataset} has no labels; the linear probe needs class folders.")
  steps_per_epoch = info.num_examples // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size} is larger than the data set "
                     f"({info.num_examples} examples).")
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  peak_lr = optim.scaled_learning_rate(config.optim.base_lr, config.batch_size)
  schedule = optim.cosine_schedule(peak_lr, num_steps, int(config.optim.warmup_epochs * steps_per_epoch))
  if config.optim.name == "lars":
    tx = optim.create_lars(schedule=schedule, momentum=config.optim.momentum,
                           weight_decay=config.optim.weight_decay)
  elif config.optim.name == "sgd":
    tx = optim.create_sgd(schedule, config.optim.momentum, config.optim.weight_decay)
  else:
    raise ValueError(f"optim.name={config.optim.name!r} must be 'lars' or 'sgd'.")
  head = _linear_head(info.num_classes)
  rep = sharding.replicated(mesh)
  state = jax.jit(lambda r: ProbeState.create(
      apply_fn=head.apply, params=head.init(r, jnp.zeros((1, frozen.feature_dim)))["params"],
      tx=tx), out_shardings=rep)(jax.random.key(config.seed))

  manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir),
                                      keep=config.keep_checkpoints, async_save=False)
  start_step = manager.latest_step() or 0
  target = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  if start_step:
    tree, _ = checkpoint.restore(manager, start_step, target)
    state = state.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])
  workdir_lib.save_config(workdir, config_dict, start_step)
  workdir_lib.truncate_metrics(workdir, start_step)

  embed = make_embed_fn(frozen.network, mesh)
  bound_embed = functools.partial(embed, frozen.variables)
  eval_options = dict(image_size=config.image_size, batch_size=config.eval_batch_size,
                      transform=config.data.eval_transform)
  if config.probe.augment:
    # Official protocol: RandomResizedCrop + flip, features recomputed every step.
    data = input_pipeline.create_pretrain_dataset(
        config.dataset, config.train_split, global_batch_size=config.batch_size,
        image_size=config.image_size, seed=config.seed, crop_scale=tuple(config.data.crop_scale),
        start_step=start_step, skip_bad_images=config.data.skip_bad_images)
    batches = ({"image": b["views"][:, 0], "label": b["label"]} for b in data.as_numpy_iterator())
    step_fn = make_probe_step(embed, mesh)
  else:
    # Fast variant: features of the un-augmented training images, computed once.
    features, labels = dataset_features(bound_embed, mesh, config.dataset, config.train_split,
                                        **eval_options)
    batches = _feature_batches(features, labels, batch_size=config.batch_size, seed=config.seed,
                               start_step=start_step)
    step_fn = make_probe_step(None, mesh)
  batches = sharding.prefetch_to_mesh(batches, mesh, 2)

  writer = workdir_lib.create_writer(workdir, jax.process_index() == 0)
  history = []
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = step_fn(state, frozen.variables, next(batches))
      history.append(metrics)
      if step % config.log_every_steps == 0 or step == num_steps:
        host = jax.device_get(history)
        history = []
        writer.write_scalars(step, {k: float(np.mean([h[k] for h in host])) for k in host[0]}
                             | {"lr": float(schedule(step - 1))})
      if step % config.checkpoint_every_steps == 0 or step == num_steps:
        checkpoint.save(manager, step, {"step": state.step, "params": state.params,
                                        "opt_state": state.opt_state},
                        {"pretrained_step": frozen.step})
    eval_features, eval_labels = dataset_features(bound_embed, mesh, config.eval_dataset,
                                                  config.eval_split, **eval_options)
    results = _probe_accuracy(head.apply, jax.device_get(state.params), eval_features,
                              eval_labels)
    frozen.check_unchanged()
    results.update(pretrained=os.path.abspath(config.pretrained), pretrained_step=frozen.step,
                   probe_steps=int(state.step))
    _write_results(workdir, writer, max(int(state.step), 1), results)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
  logging.info("Linear probe of %s (step %d): top-1 %.2f%%, top-5 %.2f%%.", config.pretrained,
               frozen.step, results["probe_top1"], results["probe_top5"])
  return results
