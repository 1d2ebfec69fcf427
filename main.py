r"""MixSiam in JAX: pretraining, linear probing and kNN evaluation.

  python main.py --config=configs/cifar10.py --workdir=/tmp/mixsiam
  python main.py --config=configs/linear_probe.py --workdir=/tmp/probe --config.pretrained=/tmp/mixsiam
  python main.py --config=configs/knn.py --workdir=/tmp/knn --config.pretrained=/tmp/mixsiam

Several processes (GPU hosts, TPU pods): start one process per host with
--jax_distributed (see README, "Several hosts").
"""
import contextlib
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Light modules only: flags parse (and --help answers) before TensorFlow and JAX load.
from mixsiam_jax.options import programs
from mixsiam_jax.planning import accelerators
from mixsiam_jax.run import cli, stderr_filter, stopping
from mixsiam_jax.workdir import locking, paths

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar10.py[:tiny].",
                                lock_config=True)
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() (one process per host). Without the three "
                  "flags below JAX detects TPU pods, SLURM and Open MPI by itself.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_integer("distributed_heartbeat_timeout_seconds", 100,
                     "Multi-process runs: a process silent this long is declared dead and the "
                     "others stop with an error (JAX's default: 100).")
flags.DEFINE_bool("allow_cpu", False,
                  "Train on the CPU even though this host has GPUs or TPUs that JAX cannot use "
                  "(by default that stops the run, naming the install command).")
flags.mark_flags_as_required(["config", "workdir"])


def _program(name):
  """The run(options, workdir) function of a program."""
  # Imported here, after main() has hidden the accelerators from TensorFlow and
  # started JAX's distributed runtime: importing the programs imports both.
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.evaluation import knn_program, linear_probe  # pylint: disable=g-import-not-at-top
  return {"pretrain": pretrain.train_and_evaluate, "knn": knn_program.run_knn,
          "linear_probe": linear_probe.run_linear_probe}[name]


def _newest_checkpoint() -> int:
  """The newest intact checkpoint step of --workdir (0: none), for the one-line errors."""
  from mixsiam_jax.checkpoints import storage  # pylint: disable=g-import-not-at-top  (loads JAX; see _program)
  return storage.latest_step(storage.checkpoint_dir(FLAGS.workdir))


def main(argv):
  if len(argv) > 1:
    cli.exit_with(f"unexpected argument(s) {' '.join(argv[1:])}: every option is a flag, e.g. "
                  "--config=configs/cifar10.py --workdir=DIR (see --help).")
  # Until the first step has finished, SIGINT and SIGTERM end the process within a moment
  # (nothing is trained yet); after it the loop saves, then stops. Several processes leave
  # SIGTERM to JAX's preemption service.
  multiprocess = FLAGS.jax_distributed or FLAGS.coordinator_address
  signals = (signal.SIGINT,) if multiprocess else (signal.SIGINT, signal.SIGTERM)
  restore_stderr = []
  # The console's stderr, whatever file descriptor 2 is turned into later (start-up notices
  # held back, libjpeg's lines filtered): the line below must reach it.
  console = os.dup(2)

  def stop_before_first_step(signum):
    logging.flush()
    for restore in restore_stderr:
      restore()  # forwards what the filter still holds first
    os.write(console, f"{stopping.before_first_step_message(signum)}\n".encode())
    _exit_without_teardown(cli.EXIT_INTERRUPTED if signum == signal.SIGINT
                           else cli.EXIT_PREEMPTED, finished=False)

  with stopping.exit_before_first_step(stop_before_first_step, signals):
    # TensorFlow and JAX load here, not at the top: flags parse (and --help answers) first,
    # and their start-up notices are held back (the same start as every tool's: cli.run_tool).
    cli.quiet_start()
    cli.import_tensorflow()
    import jax  # pylint: disable=g-import-not-at-top
    if multiprocess:
      jax.distributed.initialize(
          coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
          process_id=FLAGS.process_id,
          heartbeat_timeout_seconds=FLAGS.distributed_heartbeat_timeout_seconds)
    backend = cli.start_jax()
    logging.info("JAX process %d of %d; %d local of %d devices (%s).", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)

    def run():
      accelerators.check_backend(backend, allow_cpu=FLAGS.allow_cpu, environ=os.environ)
      options = programs.from_config(FLAGS.config)
      # One run per workdir. Only process 0 locks it: the other processes of this
      # run share its workdir, and a second run is stopped by its own process 0.
      lock = (locking.lock_workdir(FLAGS.workdir) if jax.process_index() == 0
              else contextlib.nullcontext())
      with paths.write_failures_end_the_run(FLAGS.workdir, _newest_checkpoint), lock:
        _program(programs.program_name(options))(options, FLAGS.workdir)

    # libjpeg's own warnings about corrupt files (data/decode.py names each bad file once).
    with stderr_filter.dropped() as restore:
      restore_stderr.append(restore)
      status = cli.run_program(run)
  _exit_without_teardown(status, finished=status in (cli.EXIT_FINISHED, cli.EXIT_INTERRUPTED,
                                                     cli.EXIT_PREEMPTED))


def _exit_without_teardown(status: int, finished: bool) -> None:
  """Ends the process at once with ``status``; the program has closed what it owns.

  Every way out of a program (finished, stopped on a signal, an error) has
  committed or abandoned its checkpoint, closed its metric writers, checkpoint
  manager and data streams, and released the workdir lock. What Python's
  teardown would still do is wait for threads: the ones releasing tf.data
  iterators (data/iterate.py) join TensorFlow's autotuning thread, which sleeps
  out its optimisation period (growing to 60 s) without waking (measured 5-56 s
  between "Stopped at step N" and the exit), and after an error a thread of a
  library may never end at all. Skipping the teardown skips only those waits
  and the final garbage collection.

  Args:
    status: the exit status (mixsiam_jax/run/cli.py).
    finished: the program ended normally or stopped on a signal; several
      processes then meet at JAX's shutdown barrier, which a failed process
      must not wait at (its peers stop when its heartbeats do).
  """
  # main.py keeps TensorFlow and JAX out of its module scope so that flags parse (and
  # --help answers) before either loads; a program that finished has loaded JAX (a
  # signal before the first step may come while the main thread is still importing it).
  if finished:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      jax.distributed.shutdown()  # The barrier at the end of a multi-process run.
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  # Skips the teardown that would wait (up to 60 s) for tf.data's autotuning thread.
  os._exit(status)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
