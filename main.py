r"""MixSiam in JAX: pretraining, linear probing and kNN evaluation.

  python main.py --config=configs/cifar10.py --workdir=/tmp/mixsiam
  python main.py --config=configs/linear_probe.py --workdir=/tmp/probe --config.pretrained=/tmp/mixsiam
  python main.py --config=configs/knn.py --workdir=/tmp/knn --config.pretrained=/tmp/mixsiam

Several processes (GPU hosts, TPU pods): start one process per host with
--jax_distributed (see README, "Several hosts").
"""
import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mixsiam_jax import cli, workdir_lock  # noqa: E402  (light: flags parse before TF and JAX load)

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
flags.mark_flags_as_required(["config", "workdir"])

PROGRAMS = ("pretrain", "linear_probe", "knn")


def _program(name):
  """The run(config, workdir) function of a program."""
  if name == "pretrain":
    from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
    return pretrain.train_and_evaluate
  from mixsiam_jax.evaluation import knn, linear_probe  # pylint: disable=g-import-not-at-top
  return {"knn": knn.run_knn, "linear_probe": linear_probe.run_linear_probe}[name]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(cli.QuietLibraryInfo())
  sys.unraisablehook = cli.drop_abandoned_reads(sys.unraisablehook)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # TensorFlow only feeds data: keep it off the accelerators that JAX uses.
  tf.config.set_visible_devices([], "GPU")
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.jax_distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.distributed_heartbeat_timeout_seconds)
  logging.info("JAX process %d of %d; %d local of %d devices (%s).", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  config = FLAGS.config
  program = config.get("program", "pretrain")
  if program not in PROGRAMS:
    raise app.UsageError(f"config.program={program!r} must be one of {PROGRAMS}.")
  # Boundary checks end in one line (the traceback with --v=1); anything else is a bug.
  with cli.one_line_errors():
    # One run per workdir. Only process 0 locks it: the other processes of this
    # run share its workdir, and a second run is stopped by its own process 0.
    lock = (workdir_lock.lock_workdir(FLAGS.workdir) if jax.process_index() == 0
            else contextlib.nullcontext())
    with lock:
      _program(program)(config, FLAGS.workdir)
  _exit_without_teardown()


def _exit_without_teardown() -> None:
  """Ends a finished or preempted run at once, its outputs written and closed.

  The program has returned: its checkpoints are committed, its metric writers
  and checkpoint manager closed, and the workdir lock released. What Python's
  teardown would still do is wait for the threads releasing tf.data iterators
  (data/iterate.py): each release joins TensorFlow's autotuning thread, which
  sleeps out its optimisation period (growing to 60 s) without waking. Measured
  5-56 s between "Stopped at step N" and the exit, more than a preemption's
  grace period leaves. Skipping the teardown skips only that wait and the
  final garbage collection.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    jax.distributed.shutdown()  # The barrier at the end of a multi-process run.
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
