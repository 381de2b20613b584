"""Bytes the data-parallel train step moves between devices per step, read from the compiled
HLO's collectives, with mixup pairing by a roll of the batch (jaxaudio) and by a random
permutation (what it did before).

  python bench/bench_collectives.py [--devices=2] [--batch=32]

The step is aiSFX with blocks 3-4 and the head training, augmentation on (mixup 0.2), under
`jit` over a data-parallel mesh of host devices (XLA_FLAGS forces their count, so this runs
on a CPU). Every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute
in the optimised HLO is counted with its result size (per device).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COLLECTIVE = re.compile(r"^\s*%\S+ = (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute)(-start)?\(", re.M)
SHAPE = re.compile(r"(f32|bf16|f16|s32|u32|s8|u8|pred|f64|s64)\[([0-9,]*)\]")
BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1,
         "f64": 8, "s64": 8}


def collectives(hlo: str) -> dict[str, tuple[int, int]]:
  """{kind: (count, bytes)} over the collectives of an HLO module's text."""
  out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for m in COLLECTIVE.finditer(hlo):
    size = 0
    for dtype, dims in SHAPE.findall(m.group(1)):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      size += n * BYTES[dtype]
    out[m.group(2)][0] += 1
    out[m.group(2)][1] += size
  return {k: (v[0], v[1]) for k, v in out.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--devices", type=int, default=2)
  parser.add_argument("--batch", type=int, default=32)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  # pylint: disable=import-outside-toplevel  (after XLA_FLAGS)
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from jaxaudio.runs import configs
  from jaxaudio.models.registry import get_model
  from jaxaudio.train import augment, factory, parallel, steps

  def permutation_mixup(key, x, y, alpha):   # the previous pairing, for comparison
    k1, k2 = jax.random.split(key)
    lam = jnp.maximum(*(lambda l: (l, 1 - l))(jax.random.beta(k1, alpha, alpha, (x.shape[0],))))
    perm = jax.random.permutation(k2, x.shape[0])
    lx = lam.reshape((-1,) + (1,) * (x.ndim - 1))
    return lx * x + (1 - lx) * x[perm], lam[:, None] * y + (1 - lam[:, None]) * y[perm]

  cfg = configs.base_config().train
  cfg.augment.enabled, cfg.num_steps = True, 100
  info = get_model("aisfx")
  setup = factory.build(info, 10, cfg)
  mesh = parallel.make_mesh()
  state = jax.device_put(setup.state, NamedSharding(mesh, P()))
  batch = {"mel": jnp.zeros((args.batch, 100, 96), jnp.float32),
           "label": jnp.zeros((args.batch,), jnp.int32), "mask": jnp.ones((args.batch,))}
  batch = jax.device_put(batch, NamedSharding(mesh, P(parallel.MESH_AXIS)))
  real = augment.mixup
  print(f"{args.devices} devices, global batch {args.batch}, aiSFX blocks 3-4 + head, "
        "augmentation on")
  print("\n| mixup pairing | collective | count | bytes per step |\n|---|---|---:|---:|")
  for name, fn in (("roll (jaxaudio)", real), ("random permutation (before)", permutation_mixup)):
    augment.mixup = fn
    step_cfg = steps.StepConfig(model=setup.model, tx=setup.tx, trainable=setup.trainable,
                                num_classes=10, multi_label=False, augment=cfg.augment,
                                spec=info.spec)
    par = parallel.make("jit", step_cfg, mesh)
    hlo = par.train_step.lower(state, batch).compile().as_text()
    total = 0
    for kind, (count, size) in sorted(collectives(hlo).items()):
      print(f"| {name} | {kind} | {count} | {size:,} |")
      total += size
    print(f"| {name} | all | | **{total:,}** |")
  augment.mixup = real


if __name__ == "__main__":
  main()
