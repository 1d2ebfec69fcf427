"""Evaluators: callables built once from options, then called on a state by the loop.

Like big_vision's evaluators, each is made once (which checks its data: sizes,
labels, class names, batch) and then called as often as needed. The kNN
monitor evaluates the encoder being pretrained; the probe accuracy evaluates a
linear classifier on a frozen encoder. Accuracies are in percent.
"""
import functools
from typing import Any, Callable, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mixsiam_jax import sharding
from mixsiam_jax.data import decode
from mixsiam_jax.evaluation import encoder, features, knn
from mixsiam_jax.options.shared import EvalData, KnnOptions

Metrics = Dict[str, float]


class KnnMonitor:
  """kNN top-1/top-5 of an encoder: bank = training side, queries = evaluation side.

  Made once (it checks both data sets, their labels and class names, and the
  batch), then called with variables as often as needed: during pretraining
  with the network's variables, in the kNN program with a restored encoder's.
  """

  def __init__(self, embed_fn: encoder.EmbedFn, mesh: Mesh, data: EvalData, vote: KnnOptions,
               user: str = "the kNN monitor"):
    """Checks the data.

    Args:
      embed_fn: ``(variables, images) -> features`` (see encoder.make_embed_fn).
      mesh: the data mesh.
      data: the bank (training side) and the queries (evaluation side).
      vote: k and temperature.
      user: who evaluates, named in error messages.

    Raises:
      DatasetError: a missing or unlabelled data set, or classes that differ.
      ValueError: an evaluation batch that does not split over the devices.
    """
    sharding.check_global_batch(data.batch_size, mesh)
    self.num_classes = features.check_classes(data, user).num_classes
    self._embed_fn, self._mesh, self._data, self._vote = embed_fn, mesh, data, vote
    # One for all calls: a bad file is named and decoded with checks once per run.
    self._bad_images = decode.BadImageLog()

  def __call__(self, variables: Any) -> Metrics:
    """{'knn_top1', 'knn_top5'} in percent for the encoder's ``variables``."""
    embed = functools.partial(self._embed_fn, variables)
    bank, bank_labels = features.split_features(embed, self._mesh, self._data, "train",
                                                self._bad_images)
    queries, query_labels = features.split_features(embed, self._mesh, self._data, "eval",
                                                    self._bad_images)
    feats, labels, mask = knn.shard_bank(bank, bank_labels, self._mesh)
    acc = knn.knn_accuracy(feats, labels, queries, query_labels, num_classes=self.num_classes,
                           k=min(self._vote.k, len(bank)), temperature=self._vote.temperature,
                           train_mask=mask, mesh=self._mesh)
    return {"knn_top1": 100.0 * acc["top1"], "knn_top5": 100.0 * acc["top5"]}


def pretraining_knn_monitor(network: nn.Module, mesh: Mesh, data: EvalData,
                            vote: KnnOptions) -> Callable[[Any], Metrics]:
  """The kNN monitor of a pretraining run: called with its TrainState.

  Args:
    network: the MixSiamNetwork being trained.
    mesh: the data mesh.
    data: the bank and queries at the training image size.
    vote: k and temperature.

  Returns:
    ``evaluate(state) -> {'knn_top1', 'knn_top5'}`` (percent).
  """
  embed_fn = encoder.make_embed_fn(encoder.backbone_of(network), mesh, subtree="backbone")
  monitor = KnnMonitor(embed_fn, mesh, data, vote,
                       user="the kNN monitor (--config.eval_dataset= turns it off)")
  return lambda state: monitor({"params": state.params, "batch_stats": state.batch_stats})


def probe_accuracy(head: nn.Module, params: Any, feats: np.ndarray,
                   labels: np.ndarray) -> Metrics:
  """{'probe_top1', 'probe_top5'} in percent of a linear classifier on features [N, F]."""
  logits = head.apply({"params": params}, jnp.asarray(feats))
  _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
  hits = np.asarray(top) == labels[:, None]
  return {"probe_top1": 100.0 * float(hits[:, 0].mean()),
          "probe_top5": 100.0 * float(hits.any(1).mean())}


def probe_evaluator(head: nn.Module, frozen: encoder.FrozenEncoder,
                    embed: Callable[[jax.Array], jax.Array], mesh: Mesh,
                    data: EvalData) -> Callable[[Any], Metrics]:
  """The linear probe's evaluator: accuracy on the evaluation split, then the frozen check.

  Args:
    head: the linear classifier.
    frozen: the probed encoder (its variables are checked unchanged after each call).
    embed: images -> features of the frozen encoder (its variables bound).
    mesh: the data mesh.
    data: the evaluation side is read.

  Returns:
    ``evaluate(state) -> {'probe_top1', 'probe_top5'}`` (percent).
  """

  bad_images = decode.BadImageLog()  # one for all calls, as in KnnMonitor

  def evaluate(state):
    feats, labels = features.split_features(embed, mesh, data, "eval", bad_images)
    results = probe_accuracy(head, jax.device_get(state.params), feats, labels)
    frozen.check_unchanged()
    return results
  return evaluate
