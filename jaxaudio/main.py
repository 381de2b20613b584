"""Fine-tune a pretrained audio model: `python -m jaxaudio.main --config=configs/finetune.py`.

--workdir holds checkpoints, TensorBoard logs and report/; running the same command again
continues an interrupted run. Config overrides: --config.KEY=VALUE (docs/reference/config.md lists the keys).
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from jaxaudio.runtime.command import cli
from jaxaudio.runtime import hosts
from jaxaudio.runs import configs

_CONFIG = config_flags.DEFINE_config_file("config", "configs/finetune.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Run directory (checkpoints, logs, report).")
hosts.define_flags()


def main(argv):
  del argv
  cfg = cli.load_config(_CONFIG)
  configs.validate(cfg)
  hosts.join_from_flags()   # before anything touches a JAX backend (importing does not)
  # The trainer's imports (TensorFlow for TensorBoard, grain, orbax: ~10 s) come after the
  # config and the process flags are checked, so a mistake gets its sentence at once.
  from jaxaudio.workflows import finetune  # pylint: disable=import-outside-toplevel
  test = finetune.run(cfg, _WORKDIR.value)
  if hosts.is_primary():   # every process holds the same report; one prints it
    summary = {k: v for k, v in test.items() if k != "per_class" and k != "confusion_matrix"}
    print(json.dumps(summary))
    print(f"report: {os.path.join(os.path.abspath(_WORKDIR.value), 'report')}")
  return 0


if __name__ == "__main__":
  cli.run(main)
