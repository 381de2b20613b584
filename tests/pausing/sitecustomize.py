"""Put this folder on PYTHONPATH with $PAUSE_STEP and $PAUSED_DIR set, and every
`python -m jaxaudio.main` or `jaxaudio.sweep` process (a pod's, a sweep's workers) pauses once
checkpoint $PAUSE_STEP is complete on disk: it writes $PAUSED_DIR/<pid> and waits there to be
killed. A test then kills a run at a known step, not at a moment it polled for. Nothing is
imported early: checkpointing.save is wrapped when the command itself imports it."""

import importlib.abc
import importlib.util
import os
import sys
import time

_MODULE = "jaxaudio.train.checkpointing"


def _wrap(checkpointing):
  real_save = checkpointing.save

  def save(mgr, step, *args, **kwargs):
    real_save(mgr, step, *args, **kwargs)
    if step == int(os.environ["PAUSE_STEP"]):
      mgr.wait_until_finished()   # every process of a pod takes part, as in the run's own waits
      open(os.path.join(os.environ["PAUSED_DIR"], str(os.getpid())), "w").close()
      while True:
        time.sleep(60)

  checkpointing.save = save


class _WrapOnImport(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path, target=None):
    if name != _MODULE:
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    real_exec = spec.loader.exec_module

    def exec_module(module):
      real_exec(module)
      _wrap(module)

    spec.loader.exec_module = exec_module
    return spec


_argv = getattr(sys, "orig_argv", [])
if (os.environ.get("PAUSE_STEP") and "-m" in _argv[:-1]
    and _argv[_argv.index("-m") + 1] in ("jaxaudio.main", "jaxaudio.sweep")):
  sys.meta_path.insert(0, _WrapOnImport())
