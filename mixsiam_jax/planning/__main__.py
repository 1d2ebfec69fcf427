r"""``python -m mixsiam_jax.planning --config=... --topology=...``: the deviceless compile plan.

See planner.py for the flags, the report and the exit statuses.
"""
from absl import app

from mixsiam_jax.planning import planner
from mixsiam_jax.run import cli

if __name__ == "__main__":
  planner.define_flags()
  app.run(planner.main, flags_parser=cli.parse_flags)
