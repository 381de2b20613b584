"""ONNX through jax2onnx, which converts the JAX program (Flax linen included) primitive by
primitive into standard ONNX operators (Conv, BatchNormalization, Gemm, Gather, ...), with
a symbolic batch size; run by onnxruntime. Quantisation is onnxruntime's own: float16 by
its converter (inputs and outputs stay float32), int8 by static QDQ quantisation calibrated
on the run's training windows.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from jax2onnx import to_onnx
from jax2onnx.plugins import plugin_system
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from jaxaudio.exports.contract import OUTPUTS

_CHATTY = ("jax2onnx", "onnx_ir", "onnxruntime", "root")


@contextlib.contextmanager
def _quiet():
  """The converters print debugging lines and warnings a user cannot act on: the console
  carries jaxaudio's lines only (an error still raises)."""
  levels = {name: logging.getLogger(name).level for name in _CHATTY}
  for name in _CHATTY:
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
      yield
  finally:
    for name, level in levels.items():
      logging.getLogger(name).setLevel(level)


# The plugin trees a jaxaudio model needs: JAX's primitives, jax.numpy / jax.nn and Flax linen.
_PLUGIN_TREES = ("jax", "flax/linen")


def _import_plugins() -> None:
  """Register only the plugins jaxaudio's models use. On first use jax2onnx imports every
  module under jax2onnx/plugins, its examples too, which build and compile some 70 example
  models (Equinox, NNX, dm_pix): 25 s of a 30 s first conversion on 2 cores. Where this
  jax2onnx lacks the private hook (another version), it loads everything as before."""
  if getattr(plugin_system, "_already_imported_plugins", True):
    return
  root = Path(plugin_system.__file__).parent
  for tree in _PLUGIN_TREES:
    plugin_system._import_tree(root / tree, "jax2onnx.plugins." + tree.replace("/", "."))  # pylint: disable=protected-access
  plugin_system._already_imported_plugins = True  # pylint: disable=protected-access


def convert(fn: Callable, input_name: str, window: tuple[int, ...]) -> onnx.ModelProto:
  """The float32 ONNX model of fn(input [B, *window]) -> (probabilities, embeddings)."""
  with _quiet():
    _import_plugins()
    return to_onnx(fn, [("B", *window)], input_names=[input_name],
                   output_names=list(OUTPUTS), model_name="jaxaudio")


class _Windows(CalibrationDataReader):
  """Calibration batches of training windows for onnxruntime's static quantiser."""

  def __init__(self, input_name: str, windows: np.ndarray, batch: int = 8):
    self._batches = iter([{input_name: windows[i:i + batch]}
                          for i in range(0, len(windows), batch)])

  def get_next(self):
    return next(self._batches, None)


def write(model: onnx.ModelProto, path: str, quantize: str = "none", input_name: str = "mel",
          calibration: np.ndarray | None = None) -> None:
  """Write `model` to `path`, quantised as asked ("none", "float16", "int8")."""
  if quantize == "none":
    onnx.save(model, path)
  elif quantize == "float16":
    with _quiet():
      onnx.save(convert_float_to_float16(model, keep_io_types=True), path)
  else:
    with tempfile.TemporaryDirectory() as tmp, _quiet():
      src, pre = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "pre.onnx")
      onnx.save(model, src)
      # onnxruntime's symbolic shape inference fails on PANNs' graph ("object of type
      # 'NoneType' has no len()"); ONNX's own shape inference (which keeps the batch
      # symbolic) is all the quantiser needs.
      quant_pre_process(src, pre, skip_symbolic_shape=True)
      # reduce_range: 7-bit weights. onnxruntime's x86 int8 kernels on CPUs without VNNI
      # (AVX2, AVX-512F) multiply u8 x s8 pairs into 16-bit sums that saturate; full-range
      # weights put this test model's probabilities 0.125 off float on an AVX2 EPYC (0.012
      # with 7 bits), while VNNI CPUs never saturate. The artefact runs where it is
      # deployed, not where it was built, so it is made safe for both.
      quantize_static(pre, path, _Windows(input_name, np.asarray(calibration, np.float32)),
                      quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                      weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
