"""Forward throughput of each export format on this CPU, side by side in one run.

  python bench/bench_export_speed.py [--models=aisfx] [--repeats=5] [--threads=2] [--out=FILE]

For each model (full size, seeded weights; throughput does not depend on the values) it
writes the jax.export artefact's forward (XLA, the reference) and ONNX (onnxruntime),
TF SavedModel (TensorFlow), TFLite (LiteRT) and int8 TFLite / int8 ONNX exports of the same
classifier (10 classes), then prints for batch 1 and 32 the median milliseconds per call
(the runners timed in turn, repeat after repeat, so a busy host slows them alike), windows/s
and the ratio to XLA, each artefact's size, and its parity with jax.export (max absolute
difference of probabilities and embeddings on the same log-mel windows of synthetic audio). Every runtime gets the same thread count. The int8 models are calibrated
on 32 of those windows; an int8 TFLite model takes one window per call, so its batch 32 is
32 calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from jaxaudio.runtime import xla_cpu

xla_cpu.apply()   # the commands' XLA:CPU options (YNNPACK dots), before JAX starts

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxaudio.audio import frontend  # noqa: E402
from jaxaudio.exports import build, runtime  # noqa: E402
from jaxaudio.exports.frontend_graph import window_samples  # noqa: E402
from jaxaudio.models.head import EmbeddingClassifier  # noqa: E402
from jaxaudio.models.init import init_variables  # noqa: E402
from jaxaudio.models.outputs import probabilities  # noqa: E402
from jaxaudio.models.registry import finetune_backbone, get_model  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def _audio(spec, n, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(window_samples(spec)) / spec.sample_rate
  return np.stack([0.4 * np.sin(2 * np.pi * 180.0 * (i + 1) * t)
                   + 0.05 * rng.standard_normal(len(t)) for i in range(n)]).astype(np.float32)


def _xla(model, variables):
  """The jax.export artefact's forward, as jaxaudio.inference.exported runs it."""
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  weights = [np.asarray(w) for w in leaves]

  def forward(flat, mel):
    out = model.apply(jax.tree_util.tree_unflatten(treedef, flat), mel, train=False)
    return out["embedding"], out["logits"]
  return forward, weights


def bench_model(name, repeats, threads, rows):
  info = get_model(name)
  spec = info.spec
  model = EmbeddingClassifier(finetune_backbone(info), len(CLASSES))
  x0 = jnp.zeros((1, spec.frames_per_window, spec.n_mels), jnp.float32)
  variables = init_variables(model, jax.random.PRNGKey(0), x0)
  mel = np.stack([frontend.log_mel(a, spec) for a in _audio(spec, 32)])
  forward, weights = _xla(model, variables)
  (b,) = jax.export.symbolic_shape("batch")
  exported = jax.export.export(jax.jit(forward))(
      [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
      jax.ShapeDtypeStruct((b, *x0.shape[1:]), np.float32))
  size_xla = sum(w.nbytes for w in weights) + len(exported.serialize())

  def xla(x):
    emb, logits = exported.call(weights, x)
    return {"embeddings": np.asarray(emb),
            "probabilities": probabilities(np.asarray(logits), False)}
  ref = xla(mel)
  runners = {"XLA (jax.export)": (xla, size_xla)}
  with tempfile.TemporaryDirectory() as tmp:
    for fmt, quantize in (("onnx", "none"), ("saved_model", "none"), ("tflite", "none"),
                          ("onnx", "int8"), ("tflite", "int8")):
      out = os.path.join(tmp, f"{fmt}-{quantize}")
      start = time.perf_counter()
      build.export_model(model, variables, spec, CLASSES, False, out, fmt, "mel", quantize,
                         calibration=mel if quantize == "int8" else None)
      took = time.perf_counter() - start
      path = os.path.join(out, {"onnx": "model.onnx", "tflite": "model.tflite",
                                "saved_model": "saved_model"}[fmt])
      size = (os.path.getsize(path) if os.path.isfile(path) else
              sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs))
      label = {"onnx": "ONNX (onnxruntime)", "saved_model": "SavedModel (TensorFlow)",
               "tflite": "TFLite (LiteRT)"}[fmt] + (" int8" if quantize == "int8" else "")
      runners[label] = (runtime.load(out, threads=threads), size)
      print(f"{name}: exported {label} in {took:.1f} s", file=sys.stderr)
    # Round robin: every repeat times each runner in turn, so a busy host slows them alike.
    diffs = {}
    for label, (fn, _) in runners.items():
      got = fn(mel)
      diffs[label] = {k: float(np.abs(np.asarray(got[k], np.float64) - ref[k]).max())
                      for k in ref}
    for batch in (1, 32):
      x = mel[:batch]
      times = {label: [] for label in runners}
      for label, (fn, _) in runners.items():
        fn(x)                             # warm-up (compilation, allocation)
      for _ in range(repeats):
        for label, (fn, _) in runners.items():
          start = time.perf_counter()
          fn(x)
          times[label].append(time.perf_counter() - start)
      base = statistics.median(times["XLA (jax.export)"])
      for label, (_, size) in runners.items():
        sec, diff = statistics.median(times[label]), diffs[label]
        rows.append({"model": name, "format": label, "batch": batch,
                     "ms_per_call": 1e3 * sec, "windows_per_s": batch / sec,
                     "speed_vs_xla": base / sec, "size_mb": size / 1e6,
                     "max_abs_diff_probabilities": diff["probabilities"],
                     "max_abs_diff_embeddings": diff["embeddings"]})
        r = rows[-1]
        print(f"{name:8s} {label:26s} batch {batch:2d}: {r['ms_per_call']:9.1f} ms/call "
              f"{r['windows_per_s']:8.1f} windows/s  x{r['speed_vs_xla']:.2f} of XLA  "
              f"{r['size_mb']:6.1f} MB  |dp| {diff['probabilities']:.1e} "
              f"|de| {diff['embeddings']:.1e}", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="aisfx")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--out", default="")
  args = p.parse_args()
  print(f"host: {os.cpu_count()} CPUs, {args.threads} threads per runtime, jax "
        f"{jax.__version__}", flush=True)
  rows = []
  for name in args.models.split(","):
    bench_model(name, args.repeats, args.threads, rows)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
