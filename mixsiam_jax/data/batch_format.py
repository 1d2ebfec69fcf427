"""The pretraining batch format: the one definition of what the training stream yields per step.

pipeline.create_pretrain_dataset builds its batches to it, and compile_plan
compiles the train step for it. Plain NumPy, so the planner imports no TensorFlow.
"""
from typing import Dict, Tuple

import numpy as np

# key -> (shape, dtype).
BatchFormat = Dict[str, Tuple[Tuple[int, ...], np.dtype]]


def pretrain_batch_format(batch_size: int, image_size: int, num_views: int = 2) -> BatchFormat:
  """Each key's shape and dtype in a pretraining batch.

  Args:
    batch_size: rows (per process in the pipeline, global in the planner).
    image_size: side of the square views.
    num_views: augmented views per example (2 for pretraining).

  Returns:
    {'views': ([B, V, S, S, 3], uint8), 'label': ([B], int32),
    'index': ([B], int64)}; 'index' holds the example ids, int64 as the
    pipeline computes them from its int64 stream positions.
  """
  return {"views": ((batch_size, num_views, image_size, image_size, 3), np.dtype(np.uint8)),
          "label": ((batch_size,), np.dtype(np.int32)),
          "index": ((batch_size,), np.dtype(np.int64))}
