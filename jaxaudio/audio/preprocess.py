"""Waveform clean-up before features: loudness normalisation, noise reduction, silence trim.

All operate on mono float32 at the model's rate and are deterministic, so prepared data is
reproducible and its cache key can include their settings.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def normalise_loudness(x: np.ndarray, mode: str, target_db: float) -> np.ndarray:
  """'peak': scale so max |x| is target_db dBFS; 'rms': scale RMS to target_db dBFS and limit
  peaks to 0 dBFS; 'none': unchanged. Digital silence stays silent."""
  if mode == "none":
    return x
  if mode == "peak":
    level = float(np.max(np.abs(x)))
  elif mode == "rms":
    level = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
  else:
    raise ValueError(f"loudness mode {mode!r} is not one of peak, rms, none")
  if level < _EPS:
    return x
  y = x * (10.0 ** (target_db / 20.0) / level)
  if mode == "rms":
    peak = float(np.max(np.abs(y)))
    if peak > 1.0:
      y = y / peak
  return y.astype(np.float32)


def spectral_gate(x: np.ndarray, sample_rate: int, strength: float = 1.0,
                  threshold_std: float = 1.5, n_fft: int = 1024) -> np.ndarray:
  """Stationary spectral gating, as noisereduce does it without a noise clip.

  The noise profile of each frequency bin (mean and std of its dB magnitude) comes from the
  quietest 20% of frames by total energy, which hold the noise alone in most recordings;
  cells below mean + threshold_std * std are attenuated by `strength` (0 = off, 1 = full),
  through a mask smoothed over time and frequency to avoid musical noise.
  """
  if strength <= 0 or len(x) < n_fft:
    return x
  from scipy import ndimage, signal  # pylint: disable=import-outside-toplevel  (workers start faster)
  hop = n_fft // 4
  _, _, z = signal.stft(x, fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
  db = 20.0 * np.log10(np.abs(z) + _EPS)
  energy = np.sum(np.abs(z) ** 2, axis=0)
  quiet = energy <= np.percentile(energy, 20)
  noise = db[:, quiet]
  threshold = noise.mean(axis=1, keepdims=True) + threshold_std * noise.std(axis=1, keepdims=True)
  keep = ndimage.uniform_filter((db > threshold).astype(np.float64), size=(3, 5))
  gain = 1.0 - strength * (1.0 - keep)
  _, y = signal.istft(z * gain, fs=sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
  return y[:len(x)].astype(np.float32)


def trim_bounds(x: np.ndarray, top_db: float = 60.0, frame: int = 2048,
                hop: int = 512) -> tuple[int, int]:
  """[start, end) samples of x without leading and trailing frames more than top_db below
  the loudest frame (librosa.effects.trim: centred RMS frames); the whole of x when it is
  silent."""
  import librosa  # pylint: disable=import-outside-toplevel  (slow import, only when trimming)
  if not np.any(x):
    return 0, len(x)
  _, (start, end) = librosa.effects.trim(x, top_db=top_db, frame_length=frame, hop_length=hop)
  return int(start), int(end)


def trim_silence(x: np.ndarray, top_db: float = 60.0, frame: int = 2048,
                 hop: int = 512) -> np.ndarray:
  """Cut leading and trailing frames more than top_db below the loudest frame."""
  lo, hi = trim_bounds(x, top_db, frame, hop)
  return x[lo:hi]
