"""How far float32 training gradients lie from float64 ones: aiSFX with its pretrained
weights, BatchNorm on batch statistics, batch 32 of random log-mels, softmax cross-entropy.

  python bench/grad_accuracy.py [--batch=32]

Runs itself twice in fresh processes (XLA options are fixed per process): float32 as the
trainer computes (today's XLA:CPU options, see jaxaudio/xla_cpu.py; JAXAUDIO_XLA_CPU_DEFAULT=1
for XLA's own kernels), and a float64 reference (x64, BatchNorm in float64, XLA's own
kernels). Prints each parameter's relative error ||g32 - g64|| / ||g64||: the median over
leaves and the worst three.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gradients(precision: str, batch: int, out: str) -> None:
  """Child: the classifier's parameter gradients in `precision`, saved to `out` (.npz)."""
  sys.path.insert(0, ROOT)
  # pylint: disable=import-outside-toplevel  (the child sets XLA and x64 before JAX starts)
  from jaxaudio import xla_cpu
  xla_cpu.apply()   # as the training commands do (a no-op under JAXAUDIO_XLA_CPU_DEFAULT=1)
  import jax
  if precision == "float64":
    jax.config.update("jax_enable_x64", True)
  import flax.linen as nn
  import jax.numpy as jnp
  import optax
  from jaxaudio import configs
  from jaxaudio.models import layers
  from jaxaudio.models.aisfx import AiSFX
  from jaxaudio.models.head import EmbeddingClassifier
  from jaxaudio.models.registry import get_model
  from jaxaudio.train import factory
  from jaxaudio.weights import pretrained
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  if precision == "float64":   # the models keep BatchNorm in float32 otherwise
    def bn64(name, use_running_average, axis=-1, axis_name=None,
             momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPSILON):
      return nn.BatchNorm(use_running_average=use_running_average, momentum=momentum,
                          epsilon=epsilon, axis=axis, dtype=dtype, param_dtype=dtype,
                          axis_name=axis_name, use_fast_variance=False, name=name)
    layers.batch_norm = bn64
  info = get_model("aisfx")
  cfg = configs.base_config().train
  cfg.num_steps = 100
  cfg.param_groups = (("^backbone/", "backbone"), ("^head/", "head"))
  setup = factory.build(info, 10, cfg, pretrained=pretrained.pretrained_variables(info)[0])
  model = EmbeddingClassifier(AiSFX(dtype=dtype), 10)
  cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
  params, stats = cast(setup.state.params), cast(setup.state.batch_stats)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (batch, info.spec.frames_per_window, info.spec.n_mels)),
                  dtype)
  y = jnp.asarray(np.arange(batch) % 10)

  def loss(p):
    out, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean()

  grads = jax.jit(jax.grad(loss))(params)
  np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v, np.float64)
                   for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]})


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--child", default="")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  if args.child:
    gradients(args.child, args.batch, args.out)
    return
  with tempfile.TemporaryDirectory() as tmp:
    paths = {}
    for precision in ("float32", "float64"):
      paths[precision] = os.path.join(tmp, f"{precision}.npz")
      env = dict(os.environ)
      if precision == "float64":
        env["JAXAUDIO_XLA_CPU_DEFAULT"] = "1"
      subprocess.run([sys.executable, __file__, f"--child={precision}", f"--batch={args.batch}",
                      f"--out={paths[precision]}"], env=env, check=True)
    g32, g64 = np.load(paths["float32"]), np.load(paths["float64"])
    errors = sorted(((float(np.linalg.norm(g32[k] - g64[k]) / np.linalg.norm(g64[k])), k)
                     for k in g64.files), reverse=True)
  kernels = ("XLA's own kernels" if os.environ.get("JAXAUDIO_XLA_CPU_DEFAULT", "") not in ("", "0")
             else "jaxaudio's XLA:CPU options")
  print(f"float32 ({kernels}) against float64, {len(errors)} parameter leaves: median "
        f"{np.median([e for e, _ in errors]):.1e}; worst "
        + ", ".join(f"{k} {e:.1e}" for e, k in errors[:3]))
  print(json.dumps({"median": float(np.median([e for e, _ in errors])),
                    "worst": errors[:3]}))


if __name__ == "__main__":
  main()
