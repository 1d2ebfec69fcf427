"""Evaluation of a pretrained encoder: kNN and the linear probe.

Data flows one way through the modules of this package:
  encoder.py       one restore path for a frozen encoder (a pretraining workdir's
                   checkpoint or a .pth/.npz state-dict file) and the jitted embed
                   function built on the ResNet itself.
  features.py      the features of the two labelled splits of a options.shared.EvalData
                   through an embed function.
  knn.py           the sharded weighted-kNN classifier.
  evaluators.py    evaluators built once and called on a state: the kNN monitor
                   (pretraining, the kNN program) and the probe's accuracy.
  knn_program.py   the kNN program.
  linear_probe.py  the linear-probe program (a step function on run.skeleton.train).
  program.py       what the two programs share: the encoder at its own image size
                   and results.json.
Every accuracy is in percent.
"""
