"""pyproject.toml: the installed package and its dependencies, against requirements.txt."""
import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mixsiam_jax"
# Pinned in requirements.txt for the tests only, not dependencies of the package.
TEST_ONLY = {"pytest", "pytest-xdist", "setuptools"}
# The distribution behind each third-party top-level module the package imports.
DISTRIBUTION_OF = {
    "PIL": "pillow", "absl": "absl-py", "clu": "clu", "flax": "flax", "jax": "jax",
    "matplotlib": "matplotlib", "ml_collections": "ml-collections", "numpy": "numpy",
    "optax": "optax", "orbax": "orbax-checkpoint", "tensorflow": "tensorflow-cpu",
    "tensorflow_datasets": "tensorflow-datasets",
}
# Imported only inside the functions that need them: libtpu (extra 'tpu', TPU topologies
# of the compile planner) and torch (reading and writing .pth files; not a dependency).
OPTIONAL = {"libtpu", "torch"}
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?P<extras>\[[^\]]*\])?==(?P<version>[^\s;]+)$")


def _name(name):
  return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _pins(lines, source):
  """{normalised name: (extras, version)} of 'name[extras]==version' lines."""
  pins = {}
  for line in lines:
    line = line.split("#")[0].strip()
    if not line:
      continue
    match = _PIN.match(line)
    assert match, f"{source}: {line!r} is not pinned as name==version"
    pins[_name(match["name"])] = (match["extras"] or "", match["version"])
  return pins


def _requirements(filename):
  return _pins((ROOT / filename).read_text().splitlines(), filename)


def _project():
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_runtime_dependencies_are_the_tested_pins_of_requirements_txt():
  dependencies = _pins(_project()["dependencies"], "pyproject.toml dependencies")
  runtime = {name: pin for name, pin in _requirements("requirements.txt").items()
             if name not in TEST_ONLY}
  assert dependencies == runtime


@pytest.mark.parametrize("extra,filename", [("gpu", "requirements-gpu.txt"),
                                            ("tpu", "requirements-tpu.txt")])
def test_accelerator_extras_are_the_pins_of_their_requirements_files(extra, filename):
  extras = _project()["optional-dependencies"]
  assert _pins(extras[extra], f"pyproject.toml [{extra}]") == _requirements(filename)


def _imports():
  """{top-level module: [(file, inside a function)]} of the package's absolute imports."""
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    tree = ast.parse(path.read_text(), str(path))
    in_function = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and not node.level:
        modules = [node.module]
      else:
        continue
      for module in modules:
        top = module.split(".")[0]
        if top != "mixsiam_jax" and top not in sys.stdlib_module_names:
          found.setdefault(top, []).append((path.relative_to(ROOT), id(node) in in_function))
  return found


def test_every_module_the_package_imports_is_a_dependency():
  imports = _imports()
  required = set(imports) - OPTIONAL
  assert required <= set(DISTRIBUTION_OF), (
      f"imported but not mapped to a distribution: {sorted(required - set(DISTRIBUTION_OF))}")
  dependencies = _pins(_project()["dependencies"], "pyproject.toml dependencies")
  assert {_name(DISTRIBUTION_OF[m]) for m in required} <= set(dependencies)
  module_level = [f"{path}: {m}" for m in OPTIONAL for path, inside in imports.get(m, ())
                  if not inside]
  assert not module_level, f"optional modules imported at module level: {module_level}"


@pytest.mark.slow
def test_pip_install_target_gives_an_importable_package_with_its_data(tmp_path):
  """pip install --target DIR of this tree; then the package is used from DIR alone."""
  # A copy, so the build's own folders (build/, *.egg-info) stay out of the work tree.
  source = tmp_path / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(PACKAGE, source / "mixsiam_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                  "--target", str(target), str(source)], check=True, timeout=120)

  def files(root):
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
  assert files(target / "mixsiam_jax") == files(source / "mixsiam_jax")

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(target))
  probe = textwrap.dedent("""
      import mixsiam_jax, mixsiam_jax.train
      from mixsiam_jax.planning import topologies
      print(mixsiam_jax.__file__)
      print(len((topologies.GPU_SPECS / "h100_sxm.txtpb").read_text()))
  """)
  result = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  package_file, spec_chars = result.stdout.split()
  assert pathlib.Path(package_file).parent == target / "mixsiam_jax"
  assert int(spec_chars) == len((PACKAGE / "planning" / "gpu_specs" / "h100_sxm.txtpb").read_text())
