"""TF SavedModel through jax2tf: the JAX program serialised as StableHLO inside one
XlaCallModule op, batch size symbolic, with a `serving_default` signature (input `mel` or
`audio`, outputs `probabilities` and `embeddings`) that TF Serving and tf.saved_model.load
call. Float32 only: TensorFlow has no quantiser for SavedModels.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf
from jax.experimental import jax2tf

from jaxaudio.exports.contract import OUTPUTS, with_input_name


def _named(fn: Callable, dims: str, input_name: str) -> Callable:
  """tf.function(fn) with the dict outputs; the signature's input is named `input_name`
  (the argument's name is what TF calls it)."""
  converted = jax2tf.convert(lambda x: dict(zip(OUTPUTS, fn(x))),
                             polymorphic_shapes=[f"(b, {dims})"], with_gradient=False)
  return with_input_name(converted, input_name)


def write(fn: Callable, input_name: str, window: tuple[int, ...], out_dir: str) -> None:
  """DIR/saved_model/ of fn(input [B, *window]) -> {probabilities, embeddings}."""
  serve = _named(fn, ", ".join(str(d) for d in window), input_name)
  module = tf.Module()
  module.serve = tf.function(serve, autograph=False, input_signature=[
      tf.TensorSpec([None, *window], tf.float32, name=input_name)])
  tf.saved_model.save(module, out_dir, signatures={"serving_default": module.serve})
