"""The test set-up's grouping: tests sharing an expensive fixture run on one xdist worker."""
import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_users_of_a_shared_fixture_build_it_once_under_two_workers(tmp_path):
  """Six tests use a fixture named like a SHARED_FIXTURE_GROUPS entry; under -n 2 it
  is built once (without the grouping, each worker builds its own: twice)."""
  builds = tmp_path / "builds.txt"
  (tmp_path / "conftest.py").write_text(
      "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
  (tmp_path / "test_shared.py").write_text(textwrap.dedent(f"""
      import os, time
      import pytest

      @pytest.fixture(scope="session")
      def tiny_pretrained():
        with open({str(builds)!r}, "a") as f:
          f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
        time.sleep(0.5)  # long enough that both workers would be asking for it

      @pytest.mark.parametrize("i", range(6))
      def test_uses_it(tiny_pretrained, i):
        pass

      @pytest.mark.parametrize("i", range(6))
      def test_does_not(i):
        time.sleep(0.1)
      """))
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
       "no:cacheprovider", "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "12 passed" in result.stdout, result.stdout[-3000:]
  assert len(builds.read_text().split()) == 1, (
      f"the fixture was built on workers {builds.read_text().split()}: xdist's loadgroup "
      "ignored the group marks (pytest 9.2 with pytest-xdist 3.8 does: pytest-xdist#1386)")
