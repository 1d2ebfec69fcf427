"""``python -m mixsiam_jax.weights export --workdir=DIR --out=FILE``: bad input is one line."""
from mixsiam_jax.run import cli
from mixsiam_jax.weights import files

if __name__ == "__main__":
  cli.run_tool(files.main)  # A UserError ends in one line; anything else is a bug.
