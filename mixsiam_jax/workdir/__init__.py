"""The workdir: the files a run keeps there and the rules for using it again.

  run_files.py     checks before a (re)start without writing; config.json,
                   config_changes.jsonl and metrics.jsonl; the checkpoints/ folder name.
  resume_rules.py  which config fields a resume may change, and what changes nothing trained.
  paths.py         path checks, creating folders, and the one place a failed write into
                   the workdir ends the run (exit status 4).
  locking.py       one run per workdir: the .lock file and who holds it.
"""
