"""The pretraining batch format: the one definition of what the training stream yields per step.

pipeline.create_pretrain_dataset builds its batches to it, and the compile planner
compiles the train step for it. Plain NumPy, so the planner imports no TensorFlow.
Two forms: views resized on the host ('views'), or decoded images in canvases
with the crop windows and flips that the device applies (device_crops.py).
"""
from typing import Dict, Tuple

import numpy as np

# key -> (shape, dtype).
BatchFormat = Dict[str, Tuple[Tuple[int, ...], np.dtype]]


def pretrain_batch_format(batch_size: int, image_size: int, num_views: int = 2,
                          canvas_size: int = 0) -> BatchFormat:
  """Each key's shape and dtype in a pretraining batch.

  Args:
    batch_size: rows (per process in the pipeline, global in the planner).
    image_size: side of the square views.
    num_views: augmented views per example (2 for pretraining).
    canvas_size: 0 when the host resizes the views; else the side C of the
      canvases the device cuts them from.

  Returns:
    With canvas_size 0: {'views': ([B, V, S, S, 3], uint8), 'label': ([B], int32),
    'index': ([B], int64)}. Otherwise 'views' is replaced by 'canvas' ([B, C, C, 3],
    uint8: each decoded image at the top-left corner, zero padding), 'windows'
    ([B, V, 4], float32: top, left, height, width in canvas pixels) and 'flip'
    ([B, V], bool). 'index' holds the example ids, int64 as the pipeline
    computes them from its int64 stream positions.
  """
  rest = {"label": ((batch_size,), np.dtype(np.int32)),
          "index": ((batch_size,), np.dtype(np.int64))}
  if not canvas_size:
    return {"views": ((batch_size, num_views, image_size, image_size, 3), np.dtype(np.uint8)),
            **rest}
  return {"canvas": ((batch_size, canvas_size, canvas_size, 3), np.dtype(np.uint8)),
          "windows": ((batch_size, num_views, 4), np.dtype(np.float32)),
          "flip": ((batch_size, num_views), np.dtype(np.bool_)), **rest}
