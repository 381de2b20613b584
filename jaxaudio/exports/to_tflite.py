"""TFLite through jax2tf and TensorFlow's converter (TF 2.21), which legalises the StableHLO
inside jax2tf's XlaCallModule into TFLite builtin ops.

With a symbolic batch size the converter refuses aiSFX ("'vhlo.dynamic_gather_v1' op is not
part of the vhlo support yet"; traced per example under vmap: "failed to legalize operation
'mhlo.real_dynamic_slice' that was explicitly marked illegal"): numpy-style indexing of a
symbolic-batch array lowers to dynamic gathers and slices. So the window program is
converted with a static batch of one and the batch is a tf.map_fn over it (a TFLite WHILE
loop), which every family converts; the input's batch dimension stays free. Quantisation is
the converter's: float16 weights, or int8 calibrated on the run's training windows. TF's
int8 calibration crashes (segmentation fault) on the WHILE loop, so an int8 model takes one
window per call ([1, ...]; meta.json says batch 1) and the runtime loops over windows.
"""

from __future__ import annotations

import tempfile
from typing import Callable

import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from jaxaudio.exports.contract import OUTPUTS, fixed_batch, with_input_name
from jaxaudio.exports.graph import output_dims


def _one_window(fn: Callable, input_name: str, window: tuple[int, ...], batched: bool):
  """A tf.function over [B, *window] (a map over one-window programs) or [1, *window]."""
  one = jax2tf.convert(lambda x: dict(zip(OUTPUTS, fn(x))), with_gradient=False)
  classes, dim = output_dims(fn, window)
  sig = {"probabilities": tf.TensorSpec([classes], tf.float32),
         "embeddings": tf.TensorSpec([dim], tf.float32)}

  def body(x):
    if not batched:
      return one(x)
    return tf.map_fn(lambda w: {k: v[0] for k, v in one(w[None]).items()}, x,
                     fn_output_signature=sig)
  serve = with_input_name(body, input_name)
  return tf.function(serve, autograph=False, input_signature=[
      tf.TensorSpec([None if batched else 1, *window], tf.float32, name=input_name)])


def write(fn: Callable, input_name: str, window: tuple[int, ...], path: str,
          quantize: str = "none", calibration: np.ndarray | None = None) -> None:
  """DIR/model.tflite of fn, with the signature `serving_default`."""
  serve = _one_window(fn, input_name, window, batched=fixed_batch("tflite", quantize) is None)
  with tempfile.TemporaryDirectory() as tmp:
    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
    conv = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
    if quantize == "float16":
      conv.optimizations = [tf.lite.Optimize.DEFAULT]
      conv.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
      cal = np.asarray(calibration, np.float32)
      conv.optimizations = [tf.lite.Optimize.DEFAULT]
      conv.representative_dataset = lambda: ([cal[i:i + 1]] for i in range(len(cal)))
    data = conv.convert()
  with open(path, "wb") as f:
    f.write(data)
