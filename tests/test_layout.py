"""The package's layout: few top-level modules, small modules and functions, one-way imports."""
import ast
import collections
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mixsiam_jax"
MAX_TOP_LEVEL_MODULES = 16
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 80


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_at_most_16_top_level_modules_and_no_prefix_families():
  top = [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
  assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)
  prefixes = collections.Counter(name.split("_")[0] for name in top)
  assert [p for p, n in prefixes.items() if n > 1] == [], sorted(top)


def test_no_module_over_350_lines_and_no_function_over_80():
  long_modules, long_functions = [], []
  for path in _modules():
    text = path.read_text()
    if len(text.splitlines()) > MAX_MODULE_LINES:
      long_modules.append(str(path.relative_to(PACKAGE)))
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
          long_functions.append(f"{path.relative_to(PACKAGE)}:{node.name}")
  assert long_modules == [] and long_functions == []


def _unit(module: str):
  """'mixsiam_jax.checkpoints.storage' -> 'checkpoints'; a top-level module is its own unit."""
  parts = module.split(".")
  return parts[1] if parts[0] == "mixsiam_jax" and len(parts) > 1 else None


def package_imports():
  """{unit: units it imports}, over the package's modules; __main__.py files are entry points."""
  edges = collections.defaultdict(set)
  for path in _modules():
    if path.name == "__main__.py":
      continue
    me = _unit(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = ([f"mixsiam_jax.{a.name}" for a in node.names]
                   if node.module == "mixsiam_jax" else [node.module])
      elif isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      else:
        continue
      edges[me].update(u for u in map(_unit, targets) if u and u != me)
  return edges


def test_imports_between_packages_and_top_level_modules_go_one_way():
  edges = package_imports()
  assert "options" in edges["data"] and "checkpoints" in edges["run"]  # the graph is read
  done, on_path = set(), []

  def visit(unit):
    if unit in on_path:
      raise AssertionError(f"import cycle: {' -> '.join(on_path[on_path.index(unit):] + [unit])}")
    if unit in done:
      return
    on_path.append(unit)
    for target in sorted(edges.get(unit, ())):
      visit(target)
    on_path.pop()
    done.add(unit)

  for unit in sorted(edges):
    visit(unit)
