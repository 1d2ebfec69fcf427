"""The workdir: the files a run keeps there and the rules for using it again.

  run_files.py     checks before a (re)start without writing; config.json and
                   config_changes.jsonl; the checkpoints/ folder name.
  metrics_file.py  metrics.jsonl: read back, and cut at a resume's start step.
  resume_rules.py  which config fields a resume may change, and what changes nothing trained.
  paths.py         path checks, creating folders, files written whole (a temporary
                   file renamed), and the one place a failed write into the workdir
                   ends the run (exit status 4).
  locking.py       one run per workdir: the .lock file and who holds it.
"""
