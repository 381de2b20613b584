"""Audio perturbations for the robustness sweep: each maps (waveform, rate, rng) -> waveform.

Applied to the decoded test audio before preprocessing and featurisation, so the model sees
exactly what it would see had the recording been made that way. Noise levels are SNRs
against the clip's own RMS; gains are applied in float (no clipping), which the pipeline's
loudness normalisation may undo - that invariance is part of what is measured.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import scipy.signal
import soundfile as sf

Perturbation = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1e-12


def _noise_like(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
  white = rng.standard_normal(n)
  if kind == "white":
    return white
  spec = np.fft.rfft(white)          # pink: power ~ 1/f
  f = np.fft.rfftfreq(n)
  spec[1:] /= np.sqrt(f[1:])
  spec[0] = 0.0
  return np.fft.irfft(spec, n)


def add_noise(kind: str, snr_db: float) -> Perturbation:
  def apply(x, sr, rng):
    noise = _noise_like(kind, len(x), rng)
    return x + noise * (_rms(x) / _rms(noise)) * 10.0 ** (-snr_db / 20.0)
  return apply


def gain(db: float) -> Perturbation:
  return lambda x, sr, rng: x * 10.0 ** (db / 20.0)


def hard_clip(threshold_db: float = -12.0) -> Perturbation:
  """Clip at threshold_db below the clip's peak (a heavily overdriven recording)."""
  def apply(x, sr, rng):
    t = float(np.max(np.abs(x))) * 10.0 ** (threshold_db / 20.0)
    return np.clip(x, -t, t)
  return apply


def lowpass(cutoff_hz: float = 4000.0, order: int = 8) -> Perturbation:
  """Butterworth low-pass, zero phase (telephone-band bandwidth at 4 kHz)."""
  def apply(x, sr, rng):
    if cutoff_hz >= sr / 2:
      return x
    sos = scipy.signal.butter(order, cutoff_hz, btype="low", fs=sr, output="sos")
    return scipy.signal.sosfiltfilt(sos, x)
  return apply


def time_shift(fraction: float = 0.25) -> Perturbation:
  """Delay by `fraction` of the clip: silence in front, the end cut off."""
  def apply(x, sr, rng):
    k = int(len(x) * fraction)
    return np.concatenate([np.zeros(k, x.dtype), x[:len(x) - k]])
  return apply


def crop_half() -> Perturbation:
  """Keep the middle half."""
  def apply(x, sr, rng):
    n = len(x)
    return x[n // 4:n // 4 + max(n // 2, 1)]
  return apply


def lossy(fmt: str, subtype: str) -> Perturbation:
  """Encode with libsndfile's codec and decode back (MP3, Vorbis)."""
  def apply(x, sr, rng):
    buf = io.BytesIO()
    peak = max(float(np.max(np.abs(x))), 1e-12)
    sf.write(buf, x / peak * 0.9, sr, format=fmt, subtype=subtype)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float64")
    y = y if y.ndim == 1 else y.mean(axis=1)
    return (y[:len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))) * peak / 0.9
  return apply


def lossy_supported(fmt: str, subtype: str) -> bool:
  """Whether the installed libsndfile can write (and so round-trip) this codec."""
  return fmt in sf.available_formats() and subtype in sf.available_subtypes(fmt)


def conditions() -> dict[str, Perturbation | None]:
  """The sweep, in report order; `clean` first. Lossy codecs only where libsndfile has them."""
  out: dict[str, Perturbation | None] = {"clean": None}
  for kind in ("white", "pink"):
    for snr in (30, 20, 10, 0):
      out[f"{kind}_noise_{snr}dB"] = add_noise(kind, snr)
  out["gain_-12dB"] = gain(-12.0)
  out["gain_+12dB"] = gain(12.0)
  out["hard_clip_-12dB"] = hard_clip(-12.0)
  out["lowpass_4kHz"] = lowpass(4000.0)
  out["time_shift_25%"] = time_shift(0.25)
  out["crop_half"] = crop_half()
  if lossy_supported("MP3", "MPEG_LAYER_III"):
    out["mp3"] = lossy("MP3", "MPEG_LAYER_III")
  if lossy_supported("OGG", "VORBIS"):
    out["ogg_vorbis"] = lossy("OGG", "VORBIS")
  return out
