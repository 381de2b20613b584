"""jaxaudio's log-mel frontend as a JAX function of a batch of audio windows, for graphs that
take raw audio (`--input=audio`).

jaxaudio.audio.frontend computes the features in numpy (a float64 FFT); an exported graph
cannot call numpy, so here the same steps are written as graph operations that every format
converts: the framing and its padding (zeros for the Essentia framing, reflection for the
centred one) become one Gather from a fixed index table, the window and the real DFT one
float32 matrix product, then the power, the spec's mel filterbank, its log compression and
its min-max normalisation. Resampling and file-level steps (loudness normalisation, trimming,
denoising) are outside: the graph takes mono windows already at the model's rate.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxaudio.audio import frontend, melfilters
from jaxaudio.audio.spec import FrontendSpec


def window_samples(spec: FrontendSpec) -> int:
  """Samples of one model window: the longest mono signal whose frontend output is exactly
  `frames_per_window` frames."""
  half = spec.n_fft // 2
  if spec.framing == "essentia":
    n = spec.frames_per_window * spec.hop_length - half
  else:
    n = spec.frames_per_window * spec.hop_length - 1
  assert frontend.num_frames(n, spec) == spec.frames_per_window, (spec, n)
  return n


def hop_samples(spec: FrontendSpec, window_hop: float) -> int:
  """Samples between window starts at the run's hop (a fraction of a window), as the
  predictor steps: whole frames, at least one."""
  return max(1, int(round(spec.frames_per_window * window_hop))) * spec.hop_length


def frame_indices(spec: FrontendSpec, n: int) -> np.ndarray:
  """[frames, n_fft] sample index of every frame element into the signal with one zero
  appended (index n), which stands for the zero padding of the Essentia framing."""
  half = spec.n_fft // 2
  pos = (np.arange(frontend.num_frames(n, spec))[:, None] * spec.hop_length
         + np.arange(spec.n_fft)[None, :] - half)
  if spec.framing == "essentia":
    pos = np.where((pos < 0) | (pos >= n), n, pos)
  else:
    pos = np.abs(pos)                                  # numpy's "reflect": x[1], x[2], ...
    pos = np.where(pos >= n, 2 * (n - 1) - pos, pos)
  return pos.astype(np.int32)


def dft_matrix(spec: FrontendSpec) -> np.ndarray:
  """[n_fft, 2 (n_fft/2 + 1)] float32: the analysis window times the real DFT's cosines,
  then its sines; frames @ it gives the real and imaginary parts of every bin."""
  n = np.arange(spec.n_fft)[:, None]
  k = np.arange(spec.n_fft // 2 + 1)[None, :]
  angle = 2.0 * np.pi * ((n * k) % spec.n_fft) / spec.n_fft
  win = frontend._window(spec)[:, None]  # pylint: disable=protected-access
  return np.concatenate([win * np.cos(angle), win * -np.sin(angle)], axis=1).astype(np.float32)


def log_mel_fn(spec: FrontendSpec):
  """fn(audio [B, window_samples] float32) -> normalised log-mel [B, frames, n_mels] float32,
  what jaxaudio.audio.frontend.log_mel gives for each window (float32 instead of float64
  arithmetic: see docs/guides/export.md for the measured difference)."""
  n = window_samples(spec)
  index = frame_indices(spec, n)
  dft = dft_matrix(spec)
  bins = spec.n_fft // 2 + 1
  fb = melfilters.filterbank(spec.mel_filters, spec.sample_rate, spec.n_fft, spec.n_mels,
                             float(spec.fmin), float(spec.fmax)).T.astype(np.float32)
  span = np.float32(spec.norm_max - spec.norm_min)

  def fn(audio):
    audio = audio.astype(jnp.float32)
    padded = jnp.concatenate([audio, jnp.zeros_like(audio[:, :1])], axis=1)
    frames = jnp.take(padded, jnp.asarray(index), axis=1)          # [B, T, n_fft]
    z = frames @ jnp.asarray(dft)                                   # [B, T, 2 bins]
    power = z[..., :bins] * z[..., :bins] + z[..., bins:] * z[..., bins:]
    if spec.power != 2.0:
      power = power ** np.float32(spec.power / 2.0)
    mel = power @ jnp.asarray(fb)
    if spec.compression == "log10_shift_scale":
      out = jnp.log10(np.float32(spec.log_scale) * mel + np.float32(spec.log_shift))
    else:
      out = (np.float32(10.0) * jnp.log10(jnp.maximum(mel, np.float32(spec.db_amin)))
             - np.float32(10.0 * np.log10(max(spec.db_amin, spec.db_ref))))
    return (out - np.float32(spec.norm_min)) / span
  return fn
