"""Options: the config turned once into small frozen, validated dataclasses.

  checks.py    the validators (one definition of each check) and OptionsError.
  training.py  what is trained: method, model, photometric ops, optimiser.
  shared.py    the parts the programs share: training data, evaluation data, kNN
               vote, encoder source, cadence, checkpoint keeping.
  programs.py  ``from_config``: the one place that reads a config; one options
               object per program (pretraining, linear probe, kNN).
"""
