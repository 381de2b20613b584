"""The JAX process group of a multi-host run: joining it, and failing loudly when a peer dies.

Every process runs the same program on its shard of the data (docs/design.md, "Many hosts").
On CPU the cross-process collectives are gloo's, so several processes on one machine form a
real multi-host job (`launch/local.sh`); on TPU and GPU the backend brings its own.
"""

from __future__ import annotations

import jax
from absl import flags

from jaxaudio.runtime.errors import ConfigError

# A process whose peer died stops within about this many seconds (the coordination service's
# heartbeat), instead of waiting at the next collective for ever.
HEARTBEAT_TIMEOUT_S = 15


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """jax.distributed.initialize(): from the cluster's environment (TPU pod, SLURM, ...) when
  nothing is given, else from the explicit coordinator HOST:PORT, process count and id."""
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ConfigError("--coordinator, --num_processes and --process_id go together; give all "
                      "three, or none to detect the cluster (TPU pod, SLURM).")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} is not in 0..{num_processes - 1}; number the "
                      "processes from 0.")
  # Only the CPU client reads it; TPU and GPU keep their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id,
                             heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)


def define_flags() -> None:
  """The flags of a command that runs on every process of a job (main, evaluate)."""
  flags.DEFINE_bool("distributed", False, "Join a multi-process job: jax.distributed."
                    "initialize(), from the cluster's environment (TPU pod, SLURM) or from "
                    "--coordinator, --num_processes and --process_id.")
  flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0's coordinator.")
  flags.DEFINE_integer("num_processes", None, "Processes in the job.")
  flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")


def join_from_flags() -> None:
  """initialize() as define_flags' flags ask; nothing when none is given. Call it before
  anything touches a JAX backend."""
  f = flags.FLAGS
  explicit = (f.coordinator, f.num_processes, f.process_id)
  if f.distributed or any(v is not None for v in explicit):
    initialize(*explicit)


def is_primary() -> bool:
  """Process 0 writes what exists once per run: TensorBoard, reports, config.json."""
  return jax.process_index() == 0
