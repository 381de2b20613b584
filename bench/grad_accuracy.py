"""How far float32 training gradients lie from float64 ones: aiSFX with its pretrained
weights, BatchNorm on batch statistics, batch 32 of random log-mels, softmax cross-entropy.

  python bench/grad_accuracy.py [--batch=32] [--torch]

Runs itself in fresh processes (XLA options are fixed per process): float32 as the trainer
computes (today's XLA:CPU options, see jaxaudio/runtime/xla_cpu.py; JAXAUDIO_XLA_CPU_DEFAULT=1 for
XLA's own kernels), and a float64 reference (x64, BatchNorm in float64, XLA's own kernels).
Prints each parameter's relative error ||g32 - g64|| / ||g64||: the median over leaves and
the worst three. Both see the same float32 log-mels and the same classifier head (drawn
here, not by the trainer's initialiser), so only the arithmetic differs.

--torch measures PyTorch the same way on the same point: the aisfx wheel's network with its
checkpoint (as bench/compare_torch.py builds it), the same head, input and labels, float32
against float64 (`.double()`): the yardstick for what float32 costs this network at all.
Where a ReLU's input or the two largest values of a max-pool window lie closer than float32's
rounding, the two precisions route the gradient differently; such flips, not summation
error, are what puts blocks 1-3 at 1e-4..1e-3 (rounding only the float64 run's *input* to
float32 already moves its worst leaf by 4e-4).
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
NUM_CLASSES = 10
EMBEDDING = 512


def gradients(precision: str, batch: int, out: str) -> None:
  """Child: the classifier's parameter gradients in `precision`, saved to `out` (.npz)."""
  sys.path.insert(0, ROOT)
  # pylint: disable=import-outside-toplevel  (the child sets XLA and x64 before JAX starts)
  from jaxaudio.runtime import xla_cpu
  xla_cpu.apply()   # as the training commands do (a no-op under JAXAUDIO_XLA_CPU_DEFAULT=1)
  import jax
  if precision == "float64":
    jax.config.update("jax_enable_x64", True)
  import flax.linen as nn
  import jax.numpy as jnp
  import optax
  from jaxaudio.runs import configs
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
  setup = factory.build(info, NUM_CLASSES, cfg, pretrained=pretrained.pretrained_variables(info)[0])
  model = EmbeddingClassifier(AiSFX(dtype=dtype), NUM_CLASSES)
  cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
  mel, labels, kernel, bias = problem(batch, info.spec.frames_per_window, info.spec.n_mels)
  params = dict(setup.state.params, head={"kernel": kernel, "bias": bias})
  params, stats = cast(params), cast(setup.state.batch_stats)
  x, y = jnp.asarray(mel, dtype), jnp.asarray(labels)

  def loss(p):
    out, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean()

  # compiled as the trainer's jitted step is (YNNPACK's reductions too; None for float64)
  grads = jax.jit(jax.grad(loss), compiler_options=xla_cpu.train_step_options())(params)
  np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v, np.float64)
                   for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]})


def problem(batch: int, frames: int, mels: int):
  """The shared point: float32 log-mels, labels, and a head (kernel [512, 10], bias)."""
  rng = np.random.default_rng(0)
  mel = rng.uniform(0, 1, (batch, frames, mels)).astype(np.float32)
  labels = np.arange(batch) % NUM_CLASSES
  kernel = (rng.standard_normal((EMBEDDING, NUM_CLASSES)) / np.sqrt(EMBEDDING)).astype(np.float32)
  bias = (0.01 * rng.standard_normal(NUM_CLASSES)).astype(np.float32)
  return mel, labels, kernel, bias


def torch_gradients(precision: str, batch: int, out: str) -> None:
  """Child: the same gradients from PyTorch's aiSFX (the wheel's class and checkpoint)."""
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  # pylint: disable=import-outside-toplevel  (bench-only extra)
  import torch
  import torch.nn.functional as F
  from compare_torch import torch_embedding_net
  from jaxaudio.models.registry import get_model
  spec = get_model("aisfx").spec
  mel, labels, kernel, bias = problem(batch, spec.frames_per_window, spec.n_mels)
  net, head = torch_embedding_net(), torch.nn.Linear(EMBEDDING, NUM_CLASSES)
  with torch.no_grad():
    head.weight.copy_(torch.from_numpy(kernel.T.copy()))
    head.bias.copy_(torch.from_numpy(bias))
  x = torch.from_numpy(mel)
  if precision == "float64":
    net, head, x = net.double(), head.double(), x.double()
  net.train()
  F.cross_entropy(head(net(x)), torch.from_numpy(labels)).backward()
  named = list(net.named_parameters()) + [(f"head.{k}", v) for k, v in head.named_parameters()]
  np.savez(out, **{k: v.grad.detach().numpy().astype(np.float64) for k, v in named})


def relative_errors(g32, g64) -> list[tuple[float, str]]:
  """(||g32 - g64|| / ||g64||, leaf) for every leaf, worst first."""
  return sorted(((float(np.linalg.norm(g32[k] - g64[k]) / np.linalg.norm(g64[k])), k)
                 for k in g64.files), reverse=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--child", default="")
  ap.add_argument("--out", default="")
  ap.add_argument("--torch", action="store_true", help="also PyTorch, float32 vs float64")
  args = ap.parse_args()
  if args.child:
    framework, precision = args.child.split(":")
    (torch_gradients if framework == "torch" else gradients)(precision, args.batch, args.out)
    return
  kernels = ("XLA's own kernels" if os.environ.get("JAXAUDIO_XLA_CPU_DEFAULT", "") not in ("", "0")
             else "jaxaudio's XLA:CPU options")
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for framework in ("jaxaudio", "torch") if args.torch else ("jaxaudio",):
      paths = {}
      for precision in ("float32", "float64"):
        paths[precision] = os.path.join(tmp, f"{framework}-{precision}.npz")
        env = dict(os.environ)
        if precision == "float64":
          env["JAXAUDIO_XLA_CPU_DEFAULT"] = "1"
        subprocess.run([sys.executable, __file__, f"--child={framework}:{precision}",
                        f"--batch={args.batch}", f"--out={paths[precision]}"], env=env,
                       check=True)
      errors = relative_errors(np.load(paths["float32"]), np.load(paths["float64"]))
      label = f"jaxaudio ({kernels})" if framework == "jaxaudio" else "PyTorch"
      print(f"{label}: float32 against float64, {len(errors)} parameter leaves: median "
            f"{np.median([e for e, _ in errors]):.1e}; worst "
            + ", ".join(f"{k} {e:.1e}" for e, k in errors[:3]), flush=True)
      results[framework] = {"median": float(np.median([e for e, _ in errors])),
                            "errors": errors}
  print(json.dumps(results))


if __name__ == "__main__":
  main()
