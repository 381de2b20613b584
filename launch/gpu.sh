#!/usr/bin/env bash
# GPUs: every GPU of this machine, or several machines under SLURM.
#
#   launch/gpu.sh WORKDIR [--config.KEY=VALUE ...]        # one host, all its GPUs
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=1 launch/gpu.sh WORKDIR [...]
#
# One process per host drives all of that host's GPUs (jit over the global device mesh).
# Under SLURM (SLURM_NTASKS > 1) each task runs with --distributed and
# jax.distributed.initialize() reads the coordinator and process ids from SLURM's
# environment. WORKDIR must be shared by all hosts. CONFIG (default
# configs/panns_cnn14_gpu.py) and PYTHON (default: python) pick the config and interpreter.
# Re-running the same command resumes from the last checkpoint. DRY_RUN=1 prints the command.
#SBATCH --job-name=jaxaudio
#SBATCH --exclusive
set -euo pipefail

WORKDIR="${1:?usage: $0 WORKDIR [--config.KEY=VALUE ...]}"; shift
CONFIG="${CONFIG:-configs/panns_cnn14_gpu.py}"
PYTHON="${PYTHON:-python}"
cmd=("$PYTHON" -m jaxaudio.main "--config=$CONFIG" "--workdir=$WORKDIR" "$@")
# Let XLA take GPU memory as it needs rather than 75% up front (TF is kept off the GPUs).
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
if [[ "${SLURM_NTASKS:-1}" -gt 1 ]]; then
  cmd=(srun --kill-on-bad-exit=1 "${cmd[0]}" "${cmd[@]:1:2}" --distributed "${cmd[@]:3}")
fi
if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
