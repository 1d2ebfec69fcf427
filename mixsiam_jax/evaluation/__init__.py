"""Evaluation of a pretrained encoder: kNN and the linear probe.

Data flows one way through the modules of this package:
  encoder.py       one restore path for a frozen encoder (a pretraining workdir's
                   checkpoint or a .pth/.npz state-dict file) and the jitted embed
                   function built on the ResNet itself.
  features.py      the two labelled splits an evaluation reads (EvalData) and
                   their features through an embed function.
  knn.py           the sharded weighted-kNN classifier, the KnnMonitor evaluator
                   (pretraining and the kNN program) and run_knn.
  linear_probe.py  the linear-probe program (a step function on loop.run).
  program.py       what the two programs share: the encoder at its own image size
                   and results.json.
Every accuracy is in percent.
"""
