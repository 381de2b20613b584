"""`python pause_after_checkpoint.py ARGS` runs `python -m jaxaudio.main ARGS`, except that once
checkpoint $PAUSE_STEP is complete on disk the process writes the file $PAUSED_DIR/<pid> and
waits there to be killed: a test kills a run at a known step, not at a moment it polled for.
As $PYTHON of launch/local.sh (via a shell wrapper) it pauses every process of a pod."""

import os
import runpy
import sys
import time

from jaxaudio.train import checkpointing

_real_save = checkpointing.save


def _save(mgr, step, *args, **kwargs):
  _real_save(mgr, step, *args, **kwargs)
  if step == int(os.environ["PAUSE_STEP"]):
    mgr.wait_until_finished()   # every process takes part, as in the run's own waits
    open(os.path.join(os.environ["PAUSED_DIR"], str(os.getpid())), "w").close()
    while True:
      time.sleep(60)


checkpointing.save = _save
sys.argv = ["jaxaudio.main"] + sys.argv[1:]
runpy.run_module("jaxaudio.main", run_name="__main__", alter_sys=True)
