"""Test set-up: eight simulated CPU devices, so every sharding path runs here.

XLA reads the flag once, when jax is first imported, so it must be set before
any test module imports jax.
"""
import os

# Optimisation level 0 cuts XLA:CPU compile times (random initialisers especially)
# by 5-10x; it changes code generation, not results.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
# TensorFlow is only used for input pipelines; keep it off any accelerator and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Tests run on CPU devices; where libtpu is installed (the compile-plan tests), this keeps
# every test process from starting the TPU runtime, which searches for a TPU and says so.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402,F401  (must come after XLA_FLAGS)

import os.path  # noqa: E402
import pathlib  # noqa: E402
import tarfile  # noqa: E402

import pytest  # noqa: E402

# CI runs in a fresh clone with shared/ beside the repository.
CIFAR_ARCHIVE = pathlib.Path(__file__).resolve().parents[2] / "shared/data/cifar10_train_jpeg.tar.gz"


def extract_cifar(root: pathlib.Path, per_class: int, start: int = 0) -> pathlib.Path:
  """Unpacks images start..start+per_class-1 of every class; returns root/'train'."""
  if not CIFAR_ARCHIVE.exists():
    pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR_ARCHIVE} (expected shared/ beside the repo)")
  wanted = {f"{i:04d}.jpg" for i in range(start, start + per_class)}
  with tarfile.open(CIFAR_ARCHIVE) as tar:
    members = [m for m in tar.getmembers() if m.isfile() and os.path.basename(m.name) in wanted]
    tar.extractall(root, members=members, filter="data")
  return root / "train"


@pytest.fixture(scope="session")
def cifar_jpeg_folder(tmp_path_factory):
  """A PATH/<class>/<jpg> folder of 20 real CIFAR-10 JPEGs per class (200 files)."""
  return extract_cifar(tmp_path_factory.mktemp("cifar_jpeg"), per_class=20)


@pytest.fixture(scope="session")
def tiny_pretrained(cifar_jpeg_folder, tmp_path_factory):
  """A finished 6-step pretraining run of configs/cifar10.py:tiny on the JPEG folder."""
  from configs import cifar10  # pylint: disable=g-import-not-at-top
  from mixsiam_jax import pretrain  # pylint: disable=g-import-not-at-top
  from mixsiam_jax.options import programs
  config = cifar10.get_config("tiny")
  config.dataset = config.eval_dataset = f"folder:{cifar_jpeg_folder}"
  config.async_checkpointing = False
  workdir = tmp_path_factory.mktemp("tiny_pretrained")
  pretrain.train_and_evaluate(programs.from_config(config), str(workdir))
  return workdir


# Fixtures that take a minute or more to build, and the xdist group of the tests using them:
# with -n 2 --dist loadgroup, each group runs on one worker, so each fixture is built once.
SHARED_FIXTURE_GROUPS = {
    "straight": "reliability_straight_run",    # test_reliability: a 12-step run (+ "interrupted")
    "tiny_pretrained": "tiny_pretrained_run",  # evaluation and main tests: a 6-step run
    "precision_runs": "precision_runs",        # test_precision: bf16 and f32 runs
}


@pytest.hookimpl(tryfirst=True)  # before xdist's hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
  """Groups the tests of each expensive shared fixture; runs the slow tests first.

  Groups: a test using a fixture of SHARED_FIXTURE_GROUPS gets that fixture's
  xdist_group mark. xdist hands out the largest groups first, so the long ones
  start at once.
  Order: with -n 2, xdist hands out the other tests in collection order. Started
  last, a few minutes-long tests leave one worker busy while the other idles;
  started first, the short tests fill both workers' ends.
  """
  del config
  for item in items:
    groups = {SHARED_FIXTURE_GROUPS[name] for name in getattr(item, "fixturenames", ())
              if name in SHARED_FIXTURE_GROUPS}
    if len(groups) > 1:
      raise pytest.UsageError(f"{item.nodeid} uses fixtures of two xdist groups {sorted(groups)}; "
                              "one worker cannot hold both: merge the groups.")
    if groups:
      item.add_marker(pytest.mark.xdist_group(groups.pop()))
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def one_block_per_stage(monkeypatch):
  """ResNet-18's structure with one basic block per stage: the same layers, wrapping,
  collectives and decisions, compiled in about half the time. For tests whose subject
  is not the network's depth."""
  from mixsiam_jax.models import resnet  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(resnet.RESNET_STAGES, 18, ("basic", (1, 1, 1, 1)))
