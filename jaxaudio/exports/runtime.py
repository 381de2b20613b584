"""Run an ONNX, TFLite or SavedModel export without JAX (or jaxaudio's training code):
onnxruntime, the LiteRT interpreter (ai_edge_litert; TensorFlow's tf.lite where it is
absent) and TensorFlow. What tests, the benchmark and the quantisation report call.

  model = runtime.load(DIR); out = model(x)   # {"probabilities": [B, C], "embeddings": [B, D]}
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jaxaudio.exports import contract


class Artefact:
  """One loaded export: meta.json and a callable over input batches (any batch size: a
  graph with a fixed batch of one is called window by window)."""

  def __init__(self, path: str, meta: dict[str, Any], threads: int | None = None):
    self.path, self.meta = path, meta
    self.format = meta["format"]
    self.input_name = meta["input"]["name"]
    self._run = {"onnx": self._onnx, "tflite": self._tflite,
                 "saved_model": self._saved_model}[self.format](threads)

  def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
    x = np.ascontiguousarray(x, np.float32)
    if self.meta["batch"] == "any":
      return self._run(x)
    parts = [self._run(x[i:i + 1]) for i in range(len(x))]
    return {k: np.concatenate([p[k] for p in parts]) for k in contract.OUTPUTS}

  def _onnx(self, threads):
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel  (only this format's runtime)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
      opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(os.path.join(self.path, contract.FILES["onnx"]), opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(x):
      return dict(zip(names, sess.run(names, {self.input_name: x})))
    return run

  def _tflite(self, threads):
    try:
      from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover - LiteRT is in the export extra
      from tensorflow.lite import Interpreter  # pylint: disable=import-outside-toplevel
    interp = Interpreter(model_path=os.path.join(self.path, contract.FILES["tflite"]),
                         num_threads=threads)
    runner = interp.get_signature_runner("serving_default")

    def run(x):
      out = runner(**{self.input_name: x})
      return {k: np.asarray(out[k]) for k in contract.OUTPUTS}
    return run

  def _saved_model(self, threads):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if threads:
      try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
      except RuntimeError:  # process-wide, settable only before TensorFlow first runs
        pass
    fn = tf.saved_model.load(os.path.join(self.path, contract.FILES["saved_model"])
                             ).signatures["serving_default"]

    def run(x):
      out = fn(**{self.input_name: tf.constant(x)})
      return {k: out[k].numpy() for k in contract.OUTPUTS}
    return run


def load(path: str, threads: int | None = None) -> Artefact:
  """The export in `path`; a folder without one is one clear error."""
  meta_path = os.path.join(path, contract.META)
  meta = None
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
  if not meta or meta.get("format") not in contract.FILES or not os.path.exists(
      os.path.join(path, contract.FILES[meta["format"]])):
    raise ValueError(f"{path} is not an ONNX, TFLite or SavedModel export of jaxaudio (no "
                     "meta.json naming its model file); write one with python -m "
                     "jaxaudio.exported --workdir=RUN --format=onnx|saved_model|tflite "
                     "--out=DIR.")
  return Artefact(path, meta, threads)
