"""Command-line plumbing: every way out as one exit status, library noise kept quiet.

main.py and every other entry point (python -m mixsiam_jax.visualize, .plot,
.weights, .planning; scripts/ and benchmarks/) start the same way:
quiet_start, then TensorFlow (import_tensorflow, only where data is read) and
JAX's backend (start_jax) with their start-up notices dropped, then the program
under run_program; run_tool does all of that for a tool. A user's mistake (a
misspelt config field, a bad flag value, a config file that does not load, any
UserError raised by a program) ends the program with one line, ``error: ...``;
a stop on a signal with one line saying so; every other exception is a bug and
keeps its traceback. The exit statuses (README, "Exit status"):

  0    finished (or had finished before);
  1    an input error: flags, config, data, workdir, checkpoint (one line);
  3    training diverged (a non-finite loss or norm); the newest checkpoint is good;
  4    a checkpoint could not be written (disk full, permission, I/O error);
  5    a multi-process run lost another process (a collective failed);
  70   an unexpected error (a bug): the traceback is printed;
  75   preempted (SIGTERM) with the checkpoint saved: EX_TEMPFAIL, "try again",
       so that a scheduler restarts the run (rerunning resumes it);
  130  interrupted by Ctrl-C with the checkpoint saved (a second Ctrl-C ends
       the process at once, killed by SIGINT).
"""
import contextlib
import os
import re
import signal
import sys
import traceback
from typing import Any, Callable, Iterator, List, NoReturn, Sequence

from absl import flags, logging

from mixsiam_jax.errors import UserError
from mixsiam_jax.run import library_noise
from mixsiam_jax.run.stopping import Stopped
from mixsiam_jax.workdir.resume_rules import FORMER_FIELDS

EXIT_FINISHED = 0
EXIT_LOST_PEER = 5
EXIT_BUG = 70
# sysexits.h's EX_TEMPFAIL: a preempted run is unfinished work that a rerun resumes; 0
# would tell a scheduler (a Kubernetes Job, SLURM) that the run completed.
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 128 + signal.SIGINT


def exit_with(message: str, status: int = 1) -> NoReturn:
  """Ends the program with ``error: message`` on stderr and ``status``."""
  if status == 1:
    sys.exit(f"error: {message}")  # SystemExit prints its text and exits with 1.
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(status)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  """Turns a UserError raised inside the block into one line and its exit status.

  The traceback is logged at debug level (--v=1 shows it).
  """
  try:
    yield
  except UserError as e:
    logging.debug("Traceback of the error below:", exc_info=True)
    exit_with(str(e), e.exit_status)


def run_program(program: Callable[[], object], resumable: bool = True) -> int:
  """Runs ``program`` and returns the exit status of however it ended (module docstring).

  Prints one line on stderr for a user error or a stop on a signal, and the
  traceback for anything else. Nothing is left to Python's teardown: the
  caller ends the process with the status.

  Args:
    program: the whole program, resources included (it closes what it opens).
      An int it returns is the exit status (as from ``sys.exit(main())``).
    resumable: the program trains from checkpoints (main.py): the lines after
      a bug or a Ctrl-C say what became of them. Tools (run_tool) have none.

  Returns:
    The exit status.
  """
  try:
    result = program()
    return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_FINISHED
  except Stopped as e:
    print_line(str(e))
    return EXIT_INTERRUPTED if e.signum == signal.SIGINT else EXIT_PREEMPTED
  except UserError as e:
    logging.debug("Traceback of the error below:", exc_info=True)
    print_line(f"error: {e}")
    return e.exit_status
  except KeyboardInterrupt:
    print_line("interrupted (Ctrl-C) before training started; nothing to save." if resumable
               else "interrupted (Ctrl-C).")
    return EXIT_INTERRUPTED
  except SystemExit as e:
    if isinstance(e.code, str):
      print_line(e.code)  # What Python would print at its exit, which the caller skips.
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException as e:  # pylint: disable=broad-except  (a bug: its traceback, then the exit)
    if _lost_peer(e):
      logging.debug("Traceback of the error below:", exc_info=True)
      print_line(f"error: lost contact with another process of this run ({_first_line(e)}); "
                 "its own log says why. Restart every process with the same command to resume "
                 "from the newest checkpoint.")
      return EXIT_LOST_PEER
    logging.flush()
    traceback.print_exc()
    print_line(f"error: unexpected {sys.exc_info()[0].__name__} (a bug; the traceback is above)."
               + (" The newest checkpoint is intact: rerun the same command to resume."
                  if resumable else ""))
    return EXIT_BUG


def quiet_start() -> None:
  """Readies this process for a command line's program, before TensorFlow or JAX starts.

  Sets TF_CPP_MIN_LOG_LEVEL=2 (TensorFlow's and XLA's C++ INFO and WARNING logs;
  a value the user set is kept), adds QuietLibraryInfo to absl's log handler
  and installs drop_abandoned_reads as sys.unraisablehook. Call it once, first.
  A tool that parses its arguments with argparse (absl's flags unparsed) gets
  absl's handler at INFO, so that the library's progress lines (a download, a
  compile) reach its console as they reach main.py's.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl's own flags at their defaults, without its warning
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(library_noise.QuietLibraryInfo())
  sys.unraisablehook = library_noise.drop_abandoned_reads(sys.unraisablehook)


def import_tensorflow() -> Any:
  """Imports TensorFlow with its start-up notices dropped, kept off the accelerators.

  TensorFlow only feeds data (tf.data on the host CPUs); the GPUs are JAX's.
  Call it before anything else imports TensorFlow (mixsiam_jax.data does, as
  does tensorflow_datasets); a later call only returns the module.

  Returns:
    The tensorflow module.
  """
  with library_noise.start_notices_dropped(library_noise.TENSORFLOW_START_NOTICES):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # Listing the GPUs does not start TensorFlow's runtime; hiding them after it has started
    # would raise, and a second call finds nothing left to hide.
    if tf.config.get_visible_devices("GPU"):
      tf.config.set_visible_devices([], "GPU")
  return tf


def start_jax() -> str:
  """Starts JAX's backends; libtpu's search for a TPU says nothing where it finds none.

  libtpu, where installed, prints a block of notices when a host has no TPU;
  they are dropped unless the backend is a TPU. Set jax_platforms (and call
  jax.distributed.initialize) before this; a later call only returns the name.

  Returns:
    The default backend's platform: 'cpu', 'gpu' or 'tpu'.
  """
  import jax  # pylint: disable=g-import-not-at-top  (only the programs that use JAX load it)
  with library_noise.start_notices_dropped(library_noise.TPU_SEARCH_NOTICES,
                                           lambda: jax.default_backend() != "tpu"):
    return jax.default_backend()


def run_tool(program: Callable[[], object], *, tensorflow: bool = False,
             jax_backend: bool = False) -> NoReturn:
  """Runs a command-line tool's program as main.py runs its programs, then exits.

  quiet_start, then (inside run_program, so that a failure there is reported
  like any other) import_tensorflow and start_jax as asked, then ``program``.
  A UserError ends in one line and its status, a bug in its traceback and 70.
  A tool that parses its own arguments and should answer --help before
  TensorFlow or JAX loads calls import_tensorflow or start_jax itself, after
  parsing, instead of asking for them here.

  Args:
    program: the tool's whole work; an int it returns is the exit status.
    tensorflow: import TensorFlow first (tools that read data).
    jax_backend: start JAX's backend first.
  """
  quiet_start()

  def run():
    if tensorflow:
      import_tensorflow()
    if jax_backend:
      start_jax()
    return program()

  status = run_program(run, resumable=False)
  logging.flush()
  sys.exit(status)


# What a collective or the coordination service reports when a peer process is gone. Matched
# in the text because JAX raises one JaxRuntimeError type for every runtime failure.
_PEER_FAILURES = ("Gloo", "Connection reset by peer", "Connection refused", "heartbeat",
                  "coordination service", "NCCL", "DEADLINE_EXCEEDED", "UNAVAILABLE")


def _lost_peer(error: BaseException) -> bool:
  """Whether ``error`` is a runtime error of a multi-process run that lost a process."""
  jax = sys.modules.get("jax")
  if jax is None or type(error).__name__ != "JaxRuntimeError" or jax.process_count() < 2:
    return False
  return any(marker in str(error) for marker in _PEER_FAILURES)


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else type(error).__name__)[:300]


def last_error_line(output: str) -> str:
  """What a child process that ran one of these programs said last about its failure.

  A program run this way ends a failure with one ``error: ...`` line (a bug
  with the traceback above it); log lines may follow it. Parents that run
  such children (scripts/, benchmarks/) name it in their own one-line error.

  Args:
    output: the child's stderr (or its whole log).

  Returns:
    Its last line that starts with 'error:', else its last non-empty line,
    else '(no output)'.
  """
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or ["(no output)"])[-1]


def print_line(text: str) -> None:
  """Prints one line of the program's outcome on stderr, after the log lines before it."""
  logging.flush()
  sys.stderr.write(text + "\n")
  sys.stderr.flush()


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS,
                config_flag: str = "config") -> List[str]:
  """absl's flag parsing, with ml_collections' config errors as one line.

  For app.run(main, flags_parser=parse_flags). A misspelt override such as
  --config.modle.depth=18 raises a KeyError or AttributeError deep inside absl
  (a traceback of 30 lines); a config file that cannot be loaded fails only when
  the config is first used. Both end here with one line naming the flag.

  Args:
    argv: the command line, program name first.
    flag_values: the flags to parse into.
    config_flag: the name of the config_flags.DEFINE_config_file flag.

  Returns:
    The arguments left after the flags, program name first.
  """
  try:
    remaining = flag_values(list(argv))
  except flags.Error as e:
    exit_with(_flag_error_line(str(e)))
  except (KeyError, AttributeError) as e:
    if not _raised_by_config_override(e):
      raise
    exit_with(_unknown_field_line(e, argv, config_flag))
  config = flag_values[config_flag].value
  try:
    getattr(config, "keys", None)  # a config file that failed to load raises here
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    exit_with(f"--{config_flag}={flag_values[config_flag].config_filename} could not be "
              f"loaded: {lines[-1] if lines else e}")
  return remaining


def _flag_error_line(message: str) -> str:
  """absl's message in one line; a config file's traceback is reduced to its last line."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if len(lines) <= 1:
    return message.strip()
  first = lines[0].replace(" Error whilst parsing config file:", "")
  return f"{first} {lines[-1]}"


def _raised_by_config_override(error: BaseException) -> bool:
  frames = traceback.extract_tb(error.__traceback__)
  return any(f.filename.replace("\\", "/").endswith("config_flags/config_path.py") for f in frames)


def _unknown_field_line(error: BaseException, argv: Sequence[str], config_flag: str) -> str:
  """'--config.modle.depth=18: configs/x.py has no field 'modle'. Did you mean "model" ...?'"""
  arg = error
  while isinstance(arg, BaseException) and arg.args:  # AttributeError(KeyError(text))
    arg = arg.args[0]
  first, *hint = str(arg).splitlines()
  name = first.strip().strip("'\"")
  prefix = re.compile(rf"^--?{config_flag}\.")
  override = next((a for a in argv if prefix.match(a)
                   and name in prefix.sub("", a).split("=")[0].split(".")), None)
  source = next((a.split("=", 1)[1] for a in argv
                 if re.match(rf"^--?{config_flag}=", a)), "the config")
  hint_text = " ".join(line.strip() for line in hint if line.strip())
  field = prefix.sub("", override or "").split("=")[0]
  if field in FORMER_FIELDS:
    hint_text = f"It was renamed: use --{config_flag}.{FORMER_FIELDS[field]}."
  return (f"{override or f'--{config_flag}.{name}'}: {source} has no field {name!r}."
          + (f" {hint_text}" if hint_text else ""))
