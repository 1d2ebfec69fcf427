"""Runs the project's entry points as a user does, and reads their one-line errors."""
import os
import pathlib
import subprocess
import sys

from mixsiam_jax.run import cli, library_noise

REPO = pathlib.Path(__file__).resolve().parents[1]
# What TensorFlow and libtpu print while a process starts; an entry point shows none of it.
START_NOTICES = library_noise.TENSORFLOW_START_NOTICES + library_noise.TPU_SEARCH_NOTICES


def run(*args, timeout=120, **env):
  """Runs ``python ARGS...`` in the repository, as a user would; returns the finished process.

  JAX chooses its platform (conftest.py's JAX_PLATFORMS=cpu is dropped), so that
  where libtpu is installed it searches for a TPU as it does for a user.

  Args:
    *args: the command line after the interpreter, e.g. '-m', 'mixsiam_jax.plot', ...
    timeout: seconds.
    **env: environment variables to set (e.g. TFDS_DATA_DIR).

  Returns:
    The subprocess.CompletedProcess, stdout and stderr as text.
  """
  environ = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  environ.update(env)
  return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=environ,
                        capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(result):
  """The one line that a failed entry point printed on stderr.

  Fails the test unless the process failed as on a user error (a status other
  than 0 and 70) and its stderr is exactly one non-empty line, 'error: ...',
  with no traceback and no start-up notice of a library.

  Args:
    result: from run().

  Returns:
    That line.
  """
  stderr = result.stderr
  assert result.returncode not in (0, cli.EXIT_BUG), (result.returncode, stderr[-3000:])
  assert "Traceback" not in stderr, stderr[-3000:]
  assert not [n for n in START_NOTICES if n in stderr], stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  return lines[0]
