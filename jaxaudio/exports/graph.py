"""The function each format converts: a model's input window -> (probabilities,
embeddings), with the run's weights inside as constants.

Probabilities are computed in the graph (sigmoid per class for a multi-label run, softmax
over classes otherwise), as jaxaudio.models.outputs computes them from the logits, so a
runtime needs nothing but the artefact.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.exports import frontend_graph


def model_fn(model: nn.Module, variables: Any, multi_label: bool) -> Callable:
  """mel [B, frames, mels] -> (probabilities [B, C], embeddings [B, D]), float32."""
  def fn(mel):
    out = model.apply(variables, mel, train=False)
    logits = out["logits"].astype(jnp.float32)
    probs = jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)
    return probs, out["embedding"].astype(jnp.float32)
  return fn


def export_fn(model: nn.Module, variables: Any, multi_label: bool, spec: FrontendSpec,
              input_kind: str) -> tuple[Callable, tuple[int, ...]]:
  """(fn, the shape of one input window) for `input_kind` "mel" or "audio" (the frontend
  inside)."""
  net = model_fn(model, variables, multi_label)
  if input_kind == "mel":
    return net, (spec.frames_per_window, spec.n_mels)
  mel = frontend_graph.log_mel_fn(spec)
  return (lambda audio: net(mel(audio))), (frontend_graph.window_samples(spec),)


def output_dims(fn: Callable, window: tuple[int, ...]) -> tuple[int, int]:
  """(classes, embedding size) of `fn`, by shape evaluation only."""
  probs, emb = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *window), jnp.float32))
  return int(probs.shape[-1]), int(emb.shape[-1])
