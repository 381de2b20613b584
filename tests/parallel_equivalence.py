"""Run as a script on N fake CPU devices: train the same tiny model 3 steps three ways and
print the largest parameter / batch-stat differences to the single-device run as JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_equivalence.py

aiSFX's 2x2 pools average here instead of taking the maximum. A max pool's gradient goes to
the window's largest element alone, and N devices sum in another order than one device, so
a window whose two largest elements lie within that rounding sends its gradient elsewhere:
on an AVX2 EPYC one such window in 3 steps moved a block-3 kernel 6.5e-5 apart (0.5% of its
gradient; one device with its input perturbed by 1e-5 flips windows alike), on another CPU
none did. Averaging keeps the gradients continuous, so N devices must agree with one to
rounding (6e-8 to 1.2e-7) on every CPU; the pooling's own gradient is tested on its own.
"""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train_core import TINY, batch, step_cfg  # noqa: E402  pylint: disable=wrong-import-position

from jaxaudio.models import layers  # noqa: E402
from jaxaudio.runs import configs  # noqa: E402
from jaxaudio.data.pipeline import device_batch  # noqa: E402
from jaxaudio.models.registry import get_model  # noqa: E402
from jaxaudio.train import factory, parallel, steps  # noqa: E402


def average_pools():
  """Every ConvBlock pools by the window's mean, whatever its model asks for."""
  pool2d = layers.pool2d
  layers.pool2d = lambda x, window, kind="max": pool2d(x, window, "avg")


def main(num_steps=3):
  cfg = configs.base_config().train
  cfg.probe_steps = 0
  cfg.head_dropout = 0.0
  cfg.warmup_steps = 1
  cfg.num_steps = 100
  info = get_model("aisfx")
  batches = [{k: np.asarray(v) for k, v in batch(n=8, seed=i).items()} for i in range(num_steps)]
  results = {}
  single = factory.build(info, 3, cfg, widths=TINY)
  train = jax.jit(lambda s, b: steps.train_step(s, b, step_cfg(single, cfg, augment_on=False)))
  state = single.state
  for b in batches:
    state, _ = train(state, b)
  reference = jax.tree_util.tree_map(np.asarray, {"params": state.params,
                                                  "batch_stats": state.batch_stats})
  for mode in ("pmap", "jit"):
    setup = factory.build(info, 3, cfg, widths=TINY,
                          bn_axis_name=parallel.PMAP_AXIS if mode == "pmap" else None)
    scfg = step_cfg(setup, cfg, augment_on=False,
                    axis_name=parallel.PMAP_AXIS if mode == "pmap" else None)
    par = parallel.make(mode, scfg)
    state = par.put_state(setup.state)
    # On the devices once, not host arrays copied at every step.
    assert all(isinstance(x, jax.Array) and len(x.sharding.device_set) == jax.device_count()
               for x in jax.tree_util.tree_leaves(state))
    for b in batches:
      state, metrics = par.train_step(state, device_batch(b, mode, par.mesh))
    host = par.get_state(state)
    got = {"params": host.params, "batch_stats": host.batch_stats}
    diffs = [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(r, np.float64))))
             for a, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(reference))]
    moved = max(float(np.max(np.abs(np.asarray(r) - np.asarray(i)))) for r, i in zip(
        jax.tree_util.tree_leaves(reference["params"]),
        jax.tree_util.tree_leaves(single.state.params)))
    results[mode] = {"max_abs_diff": max(diffs), "param_change": moved,
                     "devices": jax.device_count()}
  print(json.dumps(results))


if __name__ == "__main__":
  average_pools()
  main()
