"""Checkpoints: a training run's state saved and restored with Orbax.

  storage.py          the Orbax manager of a workdir's checkpoints/: save (replicated
                      arrays saved whole), the newest intact step, restore onto the
                      state's shardings.
  reader.py           a pretraining run's checkpoint read for evaluation, replicated on
                      any device layout.
  run_checkpoints.py  ``Checkpoints``: one run's checkpoints as one object (manager,
                      state <-> tree, metadata), as the loop and the skeleton use them.
  checksums.py        the CRC-32 of every saved array, recorded at save and verified
                      at restore.
  faults.py           diagnoses of failed saves and of broken or corrupt steps.
  type_handlers.py    the Orbax type handlers registered for our arrays.
"""
