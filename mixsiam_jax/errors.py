"""The errors a user can fix by changing an input: UserError and those several packages raise.

Programs raise subclasses of UserError at their boundaries (config values, files,
workdirs, checkpoints, data sets); main.py prints those as one line. Any other
exception, JAX's own ValueErrors included, is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """An input (config value, path, file) is wrong; the message names it and the fix.

  Attributes:
    exit_status: main.py's exit status for this error (subclasses for
      divergence and failed saves have their own; README, "Exit status").
  """
  exit_status = 1


class DatasetError(UserError):
  """A data set cannot be used; the message names it and says how to fix it."""


class DataChangedError(DatasetError):
  """A data set lists differently from when the run started (files or classes gone or added)."""


class WorkdirError(UserError):
  """A workdir that cannot be used as asked."""
