"""Fine-tune a pretrained audio model: `python -m jaxaudio.main --config=configs/finetune.py`.

--workdir holds checkpoints, TensorBoard logs and report/; running the same command again
continues an interrupted run. Config overrides: --config.KEY=VALUE (README lists the keys).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from jaxaudio import cli, hosts

_CONFIG = config_flags.DEFINE_config_file("config", "configs/finetune.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Run directory (checkpoints, logs, report).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process job: jax.distributed.initialize(), from the "
    "cluster's environment (TPU pod, SLURM) or from the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator", None,
                                   "HOST:PORT of process 0's coordinator (with --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")


def main(argv):
  del argv
  cfg = cli.load_config(_CONFIG)
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if _DISTRIBUTED.value or any(v is not None for v in explicit):
    hosts.initialize(*explicit)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log = logging.getLogger("jaxaudio")
  log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False  # absl stays at WARNING: orbax and TF are chatty at INFO
  # Imported after jax.distributed.initialize(): nothing may touch a JAX backend before it.
  from jaxaudio import experiment  # pylint: disable=import-outside-toplevel
  test = experiment.run(cfg, _WORKDIR.value)
  if hosts.is_primary():   # every process holds the same report; one prints it
    summary = {k: v for k, v in test.items() if k != "per_class" and k != "confusion_matrix"}
    print(json.dumps(summary))
    print(f"report: {os.path.join(os.path.abspath(_WORKDIR.value), 'report')}")
  return 0


if __name__ == "__main__":
  cli.run(main)
