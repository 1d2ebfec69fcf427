"""Options: the config turned once into small frozen, validated dataclasses.

  checks.py    the validators (one definition of each check) and OptionsError.
  data_names.py  data set names, evaluation transforms and the folder split grammar,
               checked without TensorFlow or the files.
  training.py  what is trained: method, model, photometric ops, optimiser.
  shared.py    the parts the programs share: training data, evaluation data, kNN
               vote, encoder source, cadence, checkpoint keeping.
  programs.py  ``from_config``: the one place that reads a config; one options
               object per program (pretraining, linear probe, kNN), each part built
               from its config group by one generic conversion.
"""
