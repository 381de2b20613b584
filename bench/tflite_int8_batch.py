"""Would a batched int8 TFLite model serve faster than today's one window per call?

  python bench/tflite_int8_batch.py [--model=aisfx] [--batch=32] [--repeats=5] [--threads=2]

TF's int8 calibration crashes on the batch loop (tf.map_fn, a TFLite WHILE) of the float
exports, so `--format=tflite --quantize=int8` writes a graph of one window ([1, ...]) and the
runtime calls it window by window (jaxaudio/exports/to_tflite.py). A graph with a *static*
batch has no loop: this script converts the same full-size classifier (seeded weights, 10
classes) both ways, the static one calibrated on batches of --batch windows, and times --batch
windows through each (the two timed in turn, --repeats times; the median), with their
probabilities' max difference from the float JAX forward. The one-window graph is today's
export (jaxaudio.exports.build.write_model); the static graph exists only here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from jaxaudio.runtime import xla_cpu

xla_cpu.apply()   # the commands' XLA:CPU options, before JAX starts

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from jax.experimental import jax2tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_export_speed import CLASSES, _audio  # noqa: E402
from jaxaudio.audio import frontend  # noqa: E402
from jaxaudio.exports import build, graph, runtime  # noqa: E402
from jaxaudio.exports.contract import OUTPUTS  # noqa: E402
from jaxaudio.models.head import EmbeddingClassifier  # noqa: E402
from jaxaudio.models.init import init_variables  # noqa: E402
from jaxaudio.models.registry import finetune_backbone, get_model  # noqa: E402


def static_batch_int8(fn, window, batch: int, calibration: np.ndarray, path: str) -> None:
  """fn converted at a static [batch, *window] input, int8-calibrated on whole batches."""
  one = jax2tf.convert(lambda x: dict(zip(OUTPUTS, fn(x))), with_gradient=False)
  serve = tf.function(lambda mel: one(mel), autograph=False,
                      input_signature=[tf.TensorSpec([batch, *window], tf.float32, name="mel")])
  with tempfile.TemporaryDirectory() as tmp:
    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
    conv = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calibration[i:i + batch]] for i in
                                           range(0, len(calibration) - batch + 1, batch))
    data = conv.convert()
  with open(path, "wb") as f:
    f.write(data)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", default="aisfx")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

  info = get_model(args.model)
  spec = info.spec
  model = EmbeddingClassifier(finetune_backbone(info), len(CLASSES))
  x0 = jnp.zeros((1, spec.frames_per_window, spec.n_mels), jnp.float32)
  variables = init_variables(model, jax.random.PRNGKey(0), x0)
  mel = np.stack([frontend.log_mel(a, spec) for a in _audio(spec, 2 * args.batch)]
                 ).astype(np.float32)
  fn, window = graph.export_fn(model, variables, False, spec, "mel")
  want = np.asarray(fn(mel[:args.batch])[0])
  with tempfile.TemporaryDirectory() as tmp:
    build.write_model(fn, window, "tflite", "mel", os.path.join(tmp, "one"), "int8", mel)
    today = runtime.Artefact(os.path.join(tmp, "one"), {"format": "tflite", "batch": 1,
                                                        "input": {"name": "mel"}},
                             threads=args.threads)
    static_path = os.path.join(tmp, "static.tflite")
    static_batch_int8(fn, window, args.batch, mel, static_path)
    runner = Interpreter(model_path=static_path, num_threads=args.threads
                         ).get_signature_runner("serving_default")
    runners = {"one window a call (today)": lambda x: today(x)["probabilities"],
               f"static batch {args.batch}": lambda x: np.asarray(runner(mel=x)["probabilities"])}
    sizes = {"one window a call (today)": os.path.getsize(os.path.join(tmp, "one",
                                                                       "model.tflite")),
             f"static batch {args.batch}": os.path.getsize(static_path)}
    x = mel[:args.batch]
    diffs = {k: float(np.abs(r(x) - want).max()) for k, r in runners.items()}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):
      for k, r in runners.items():
        t = time.perf_counter()
        r(x)
        times[k].append(time.perf_counter() - t)
  print(f"{args.model} int8 TFLite, {args.batch} windows, {args.threads} threads, "
        f"{args.repeats} repeats (median)")
  base = statistics.median(times["one window a call (today)"])
  for k in runners:
    med = statistics.median(times[k])
    print(f"{k:26s} {sizes[k] / 1e6:5.1f} MB  {args.batch / med:7.1f} windows/s  "
          f"{base / med:5.2f}x  max |probability - float JAX| {diffs[k]:.1e}")


if __name__ == "__main__":
  main()
