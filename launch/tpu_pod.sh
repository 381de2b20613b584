#!/usr/bin/env bash
# Cloud TPU VM / pod slice: create, install, train on every host, watch, delete.
#
#   export TPU_NAME=jaxaudio-pod ZONE=us-central2-b ACCELERATOR=v4-32 PROJECT=my-project
#   export WORKDIR=/mnt/runs/cnn14            # on storage every host sees (gcsfuse/Filestore)
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh setup                   # copies this checkout, installs jax[tpu] + jaxaudio
#   launch/tpu_pod.sh train --config.model.checkpoint=/mnt/models/Cnn14_mAP=0.431.pth \
#       --config.data.source=csv:/mnt/data/ESC-50-master/meta/esc50.csv
#   launch/tpu_pod.sh tensorboard             # port-forwards TensorBoard of host 0 to :6006
#   launch/tpu_pod.sh delete
#
# `train` runs the same command on every host (--worker=all) with --distributed, so
# jax.distributed.initialize() forms one job; re-running it after a preemption resumes from
# the last checkpoint in WORKDIR. CONFIG (default configs/tpu_pod.py) picks the config.
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/tpu_pod.py}"
WORKDIR="${WORKDIR:-runs/tpu_pod}"
REMOTE_DIR="${REMOTE_DIR:-jaxaudio}"
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project="$PROJECT")

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

tpu() { run gcloud compute tpus tpu-vm "$@" --zone="$ZONE" "${PROJECT_FLAG[@]}"; }

on_all() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

cmd="${1:-}"; shift || true
case "$cmd" in
  create)
    tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ;;
  setup)
    archive="$(mktemp --suffix=.tar.gz)"
    run git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
    tpu scp "$archive" "$TPU_NAME:jaxaudio.tar.gz" --worker=all
    on_all "mkdir -p $REMOTE_DIR && tar -xzf jaxaudio.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
&& python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]' \
&& .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'" ;;
  train)
    printf -v overrides '%q ' "$@"
    on_all "cd $REMOTE_DIR && .venv/bin/python -m jaxaudio.main --distributed \
--config=$CONFIG --workdir=$WORKDIR $overrides 2>&1 | tee -a train-\$(hostname).log" ;;
  tensorboard)
    tpu ssh "$TPU_NAME" --worker=0 --command="cd $REMOTE_DIR && .venv/bin/tensorboard \
--logdir=$WORKDIR/tensorboard --port=6006" -- -L 6006:localhost:6006 ;;
  delete)
    tpu delete "$TPU_NAME" --quiet ;;
  *)
    echo "usage: $0 create|setup|train [--config.KEY=VALUE ...]|tensorboard|delete" >&2
    exit 2 ;;
esac
