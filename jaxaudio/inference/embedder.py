"""Embeddings from a backbone: fixed-size jitted batches over windows, files and folders."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaudio.audio import frontend
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS, load_audio
from jaxaudio.models.outputs import in_batches
from jaxaudio.models.registry import ModelInfo


class Embedder:
  """Runs a backbone in inference mode on [N, frames, mels] windows: info.build() with the
  pretrained variables, or `module` (a fine-tuned run's classifier) with its own.

  Batches are padded to `batch_size` so one compiled program serves every call.
  """

  def __init__(self, info: ModelInfo, variables: dict[str, Any], batch_size: int = 32,
               module: nn.Module | None = None):
    self.info = info
    self.batch_size = batch_size
    module = module or info.build()
    self._variables = jax.device_put(
        {k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    self._apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
    shapes = jax.eval_shape(
        self._apply, self._variables,
        jax.ShapeDtypeStruct((1, info.spec.frames_per_window, info.spec.n_mels), jnp.float32))
    self.dim = shapes["embedding"].shape[-1]
    self.has_tags = "tag_logits" in shapes

  def embed_windows(self, windows: np.ndarray) -> np.ndarray:
    return in_batches(lambda x: self._apply(self._variables, jnp.asarray(x))["embedding"],
                      windows, self.batch_size, self.dim)

  def embed_and_tag(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings [N, D], tag probabilities [N, tags] or None) in one pass; the tags come
    from the pretrained tag layer (musicnn, vgg), sigmoid as the originals apply it."""
    if not self.has_tags:
      return self.embed_windows(windows), None

    def both(x):
      out = self._apply(self._variables, jnp.asarray(x))
      return jnp.concatenate([out["embedding"], jax.nn.sigmoid(out["tag_logits"])], axis=-1)

    joined = in_batches(both, windows, self.batch_size, self.dim + len(self.info.tag_names))
    return joined[:, :self.dim], joined[:, self.dim:]

  def file_windows(self, path: str, hop_fraction: float = 0.5,
                   max_seconds: float | None = DEFAULT_MAX_SECONDS
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(windows, offsets in seconds) of one audio file, as aiSFX's own inference cuts them."""
    spec = self.info.spec
    mel = frontend.log_mel(load_audio(path, spec.sample_rate, max_seconds), spec)
    hop = max(1, int(round(spec.frames_per_window * hop_fraction)))
    windows, starts = frontend.split_windows(mel, spec, hop)
    return windows, starts * spec.hop_length / spec.sample_rate
