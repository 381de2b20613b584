"""Training-step throughput: frozen blocks 0 vs 3, pmap vs jit, and the head-only fast path.

  python bench/bench_train.py [--model=aisfx] [--batch=32] [--steps=10] [--devices=2]

Head only: the backbone entirely frozen, trained the slow way (full forward every step) vs
the fast path (embed each window once, then head steps on cached embeddings); the
end-to-end speed-up for E epochs over a dataset is (E / slow) / (1 / embed + E / head),
printed for --epochs.

Full-size model, random weights and data (throughput does not depend on values), compile
excluded. The pmap/jit comparison re-runs this script on --devices fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count), which on a CPU host splits the same cores:
it checks the wrappers' overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from jaxaudio.runtime import xla_cpu

xla_cpu.apply()   # the training commands' XLA:CPU options, before JAX starts

FROZEN_3 = (("^backbone/(bn0|block1|block2|block3)/", "frozen"), ("^backbone/", "backbone"),
            ("^head/", "head"))
FROZEN_0 = (("^backbone/", "backbone"), ("^head/", "head"))
FROZEN_ALL = (("^backbone/", "frozen"), ("^head/", "head"))


def throughput(model: str, batch: int, steps: int, rules, mode: str, cached: bool = False,
               embed_only: bool = False) -> float:
  """Examples/s of the train step (`cached`: the head on embeddings; `embed_only`: the
  evaluation-mode forward that fills the cache)."""
  import jax
  from jaxaudio.runs import configs
  from jaxaudio.data.pipeline import device_batch
  from jaxaudio.models.registry import get_model
  from jaxaudio.train import factory, head_only, parallel
  from jaxaudio.train import steps as steps_lib
  cfg = configs.base_config().train
  cfg.probe_steps, cfg.num_steps = 0, 1000   # measure the given groups, not the probe stage
  cfg.param_groups = rules
  info = get_model(model)
  setup = factory.build(info, 10, cfg, bn_axis_name=parallel.PMAP_AXIS if mode == "pmap" else None)
  model = head_only.head_model(cfg, 10) if cached else setup.model
  augment = head_only.augment_config(cfg.augment) if cached else cfg.augment
  scfg = steps_lib.StepConfig(model=model, tx=setup.tx, trainable=setup.trainable,
                              num_classes=10, multi_label=False, augment=augment,
                              spec=info.spec, silence=0.0,
                              axis_name=parallel.PMAP_AXIS if mode == "pmap" else None)
  par = parallel.make(mode, scfg)
  rng = np.random.default_rng(0)
  shape = ((batch, info.embedding_dim) if cached
           else (batch, info.spec.frames_per_window, info.spec.n_mels))
  data = {"mel": rng.uniform(0, 1, shape).astype(np.float32),
          "label": (np.arange(batch) % 10).astype(np.int32), "mask": np.ones(batch, np.float32)}
  state = par.put_state(setup.state)
  b = device_batch(data, mode, par.mesh)
  if embed_only:
    jax.block_until_ready(par.eval_step(state, b))  # compile
    start = time.perf_counter()
    for _ in range(steps):
      out = par.eval_step(state, b)
    jax.block_until_ready(out)
    return batch * steps / (time.perf_counter() - start)
  state, m = par.train_step(state, b)  # compile
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = par.train_step(state, b)
  jax.block_until_ready(m)
  return batch * steps / (time.perf_counter() - start)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="aisfx")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--devices", type=int, default=2)
  ap.add_argument("--epochs", type=float, default=10.0)
  ap.add_argument("--child", default="")
  args = ap.parse_args()
  if args.child:
    rate = throughput(args.model, args.batch, args.steps, FROZEN_3, args.child)
    print(json.dumps({"mode": args.child, "rate": rate}))
    return
  import jax
  print(f"host: {os.cpu_count()} CPUs, jax {jax.__version__}, model {args.model}, "
        f"batch {args.batch}")
  r0 = throughput(args.model, args.batch, args.steps, FROZEN_0, "jit")
  r3 = throughput(args.model, args.batch, args.steps, FROZEN_3, "jit")
  print(f"train step, 0 frozen blocks: {r0:.1f} examples/s")
  print(f"train step, blocks 1-3 frozen: {r3:.1f} examples/s ({r3 / r0:.2f}x)")
  slow = throughput(args.model, args.batch, args.steps, FROZEN_ALL, "jit")
  embed = throughput(args.model, args.batch, args.steps, FROZEN_ALL, "jit", embed_only=True)
  head = throughput(args.model, args.batch, args.steps * 20, FROZEN_ALL, "jit", cached=True)
  e = args.epochs
  print(f"head only, full forward each step: {slow:.1f} examples/s")
  print(f"head only, fast path: embed once {embed:.1f} windows/s, then {head:.0f} examples/s "
        f"-> {(e / slow) / (1 / embed + e / head):.1f}x end to end over {e:g} epochs")
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
  for mode in ("jit", "pmap"):
    out = subprocess.run([sys.executable, __file__, f"--child={mode}", f"--model={args.model}",
                          f"--batch={args.batch}", f"--steps={args.steps}"], env=env,
                         capture_output=True, text=True, check=True)
    rate = json.loads(out.stdout.strip().splitlines()[-1])["rate"]
    print(f"{mode} on {args.devices} fake CPU devices, blocks 1-3 frozen: {rate:.1f} examples/s")


if __name__ == "__main__":
  main()
