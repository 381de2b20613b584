"""The cost of running as a pod: the same data-parallel train step on 2 devices, once as one
JAX process with 2 devices and once as 2 processes with one device each (gloo collectives
over loopback, as launch/local.sh runs them), side by side, alternating.

  python bench/bench_multihost.py [--batch=32] [--steps=10] [--rounds=2]

The step is the default recipe's (aiSFX, blocks 2-4 and the head training, augmentation on,
global batch 32) under `jit`. Each run compiles, takes 3 warm-up steps, then times `--steps`
steps (each to completion); the table gives each run's median seconds per step and the
2-process / 1-process ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(args) -> None:
  """One process of a run: train `args.steps` steps, print {"median_s": ...} (process 0)."""
  # pylint: disable=import-outside-toplevel  (XLA_FLAGS is set by the parent)
  import jax
  import numpy as np

  from jaxaudio.runs import configs
  from jaxaudio.runtime import hosts
  from jaxaudio.data import pipeline
  from jaxaudio.models.registry import get_model
  from jaxaudio.train import factory, parallel, steps

  if args.num_processes > 1:
    hosts.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
  cfg = configs.base_config().train
  cfg.augment.enabled, cfg.num_steps, cfg.probe_steps = True, 1000, 0
  info = get_model("aisfx")
  setup = factory.build(info, 10, cfg)
  step_cfg = steps.StepConfig(model=setup.model, tx=setup.tx, trainable=setup.trainable,
                              num_classes=10, multi_label=False, augment=cfg.augment,
                              spec=info.spec)
  par = parallel.make("jit", step_cfg)
  state = par.put_state(setup.state)
  rng = np.random.default_rng(jax.process_index())
  local = pipeline.per_process_batch(args.batch, jax.process_count())
  batch = {"mel": rng.standard_normal((local, 100, 96)).astype(np.float32),
           "label": rng.integers(0, 10, local).astype(np.int32),
           "clip": np.zeros(local, np.int32), "mask": np.ones(local, np.float32)}
  times = []
  for _ in range(3 + args.steps):
    start = time.perf_counter()
    state, metrics = par.train_step(state, pipeline.device_batch(batch, "jit", par.mesh))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  if jax.process_index() == 0:
    print(json.dumps({"median_s": statistics.median(times[3:]),
                      "devices": jax.device_count(), "processes": jax.process_count()}))


def run(processes: int, args) -> float:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={2 // processes}")
  procs = [subprocess.Popen(
      [sys.executable, __file__, "--worker", f"--num_processes={processes}",
       f"--process_id={i}", f"--port={port}", f"--batch={args.batch}", f"--steps={args.steps}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    if p.returncode:
      raise SystemExit(f"a worker failed:\n{err[-3000:]}")
  result = json.loads(outs[0][0].strip().splitlines()[-1])
  assert result["devices"] == 2 and result["processes"] == processes
  return result["median_s"]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--num_processes", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  print(f"global batch {args.batch}, 2 devices, aiSFX blocks 2-4 + head, augmentation on\n")
  print("| round | 1 process x 2 devices (s/step) | 2 processes x 1 device (s/step) | ratio |")
  print("|---:|---:|---:|---:|")
  ratios = []
  for r in range(args.rounds):
    one, two = run(1, args), run(2, args)
    ratios.append(two / one)
    print(f"| {r + 1} | {one:.3f} | {two:.3f} | {two / one:.2f}x |", flush=True)
  print(f"\nmedian ratio 2 processes / 1 process: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
  main()
