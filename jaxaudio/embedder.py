"""Embeddings from a backbone: fixed-size jitted batches over windows, files and folders."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxaudio.audio import frontend
from jaxaudio.audio.io import AUDIO_EXTENSIONS, load_audio
from jaxaudio.inference import in_batches
from jaxaudio.models.registry import ModelInfo


class Embedder:
  """Runs info.build() in inference mode on [N, frames, mels] windows.

  Batches are padded to `batch_size` so one compiled program serves every call.
  """

  def __init__(self, info: ModelInfo, variables: dict[str, Any], batch_size: int = 32):
    self.info = info
    self.batch_size = batch_size
    module = info.build()
    self._variables = jax.device_put(
        {k: v for k, v in variables.items() if k in ("params", "batch_stats")})
    self._apply = jax.jit(lambda v, x: module.apply(v, x, train=False)["embedding"])

  def embed_windows(self, windows: np.ndarray) -> np.ndarray:
    return in_batches(lambda x: self._apply(self._variables, jnp.asarray(x)), windows,
                            self.batch_size, self.info.embedding_dim)

  def file_windows(self, path: str, hop_fraction: float = 0.5
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(windows, offsets in seconds) of one audio file, as aiSFX's own inference cuts them."""
    spec = self.info.spec
    mel = frontend.log_mel(load_audio(path, spec.sample_rate), spec)
    hop = max(1, int(round(spec.frames_per_window * hop_fraction)))
    windows, starts = frontend.split_windows(mel, spec, hop)
    return windows, starts * spec.hop_length / spec.sample_rate


def audio_files(path: str) -> list[str]:
  """The audio file itself, or every audio file under a folder (sorted, hidden ones skipped)."""
  if os.path.isfile(path):
    return [path]
  found = []
  for root, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(root, f) for f in sorted(files)
              if not f.startswith(".") and f.lower().endswith(AUDIO_EXTENSIONS)]
  return found
