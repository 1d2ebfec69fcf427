"""Running a program: the command-line boundary, the training skeleton and its loop.

  cli.py            exit statuses, flag parsing; every entry point turns a user error
                    into one line, ``error: ...``.
  library_noise.py  TensorFlow's and libtpu's start-up notices held back, Orbax's
                    per-save lines and echoes kept to --v=1.
  stderr_filter.py  libjpeg's own warnings kept off the console.
  skeleton.py       the skeleton of both training programs: open the workdir without
                    writing, restore or init, record the run, then the loop.
  loop.py           the loop: steps in flight, stop requests, logging, checkpoints,
                    evaluations, mean metrics.
  stopping.py       stop requests (SIGTERM, Ctrl-C): save and stop, or before the first
                    step an exit within a moment.
  progress.py       the console lines of a training loop.
  metric_writer.py  metrics.jsonl and TensorBoard writers.
"""
