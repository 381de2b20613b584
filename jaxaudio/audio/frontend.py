"""Numpy log-mel frontend that reproduces each pretrained model's own feature extraction.

`log_mel(waveform, spec)` gives exactly what the model was trained on (aiSFX: the Essentia
path of the `aisfx` package; PANNs: torchlibrosa), normalised per the spec. Parity with
the originals is asserted in tests/test_frontend.py against golden files.
"""

from __future__ import annotations

import numpy as np

from jaxaudio.audio import melfilters
from jaxaudio.audio.spec import FrontendSpec

_CHUNK_FRAMES = 2048  # bounds memory on long files; results do not depend on it


def num_frames(num_samples: int, spec: FrontendSpec) -> int:
  """Frames the reference implementation produces for a signal of `num_samples`."""
  if spec.framing == "essentia":
    # FrameCutter(startFromZero=False): frame i starts at i*hop - n_fft/2 and is emitted
    # while that start lies inside the signal.
    return max(1, -(-(num_samples + spec.n_fft // 2) // spec.hop_length))
  return 1 + num_samples // spec.hop_length


def _window(spec: FrontendSpec) -> np.ndarray:
  n = np.arange(spec.n_fft)
  denom = spec.n_fft - 1 if spec.window == "hann_symmetric" else spec.n_fft
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / denom)


def _padded(waveform: np.ndarray, spec: FrontendSpec) -> np.ndarray:
  half = spec.n_fft // 2
  if spec.framing == "essentia":
    return np.concatenate([np.zeros(half, np.float32), waveform,
                           np.zeros(spec.n_fft + spec.hop_length, np.float32)])
  if len(waveform) <= half:
    raise ValueError(f"reflect padding needs more than {half} samples, got {len(waveform)}")
  return np.pad(waveform, half, mode="reflect")


def compress(mel_power: np.ndarray, spec: FrontendSpec) -> np.ndarray:
  """Apply the spec's log compression and min-max normalisation to mel power.

  The logarithm runs in float64: numpy's float32 log10 differs by an ulp between CPUs
  (AVX-512 SVML gives -100.00001 for 10 log10(1e-10)), float64 rounded to float32 does not,
  so features, padding and golden comparisons are the same on every x86-64 machine.
  """
  power = np.asarray(mel_power, np.float64)
  if spec.compression == "log10_shift_scale":
    out = np.log10(spec.log_scale * power + spec.log_shift)
  else:
    out = 10.0 * np.log10(np.maximum(power, spec.db_amin))
    out -= 10.0 * np.log10(max(spec.db_amin, spec.db_ref))
  return ((out - spec.norm_min) / (spec.norm_max - spec.norm_min)).astype(np.float32)


def silence_value(spec: FrontendSpec) -> float:
  """The normalised log-mel of digital silence: what padding must look like to the model."""
  return float(compress(np.zeros(1, np.float32), spec)[0])


def log_mel(waveform: np.ndarray, spec: FrontendSpec) -> np.ndarray:
  """Mono float waveform at spec.sample_rate -> normalised log-mel, float32 [frames, n_mels]."""
  x = np.asarray(waveform, np.float32)
  if x.ndim != 1:
    raise ValueError(f"log_mel expects a mono 1-D waveform, got shape {x.shape}")
  total = num_frames(len(x), spec)
  padded = _padded(x, spec)
  frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[::spec.hop_length]
  return frames_to_log_mel(frames[:total], spec)


def frames_to_log_mel(frames: np.ndarray, spec: FrontendSpec) -> np.ndarray:
  """[T, n_fft] float32 frames of the padded signal -> normalised log-mel [T, n_mels]; each
  frame's row depends on that frame alone, to the last bit, so a live stream that computes
  its frames as they come, a few at a time, gets the offline features (jaxaudio.inference.stream).
  The filterbank sum runs in float64: BLAS's float32 sum of a row differs by an ulp with the
  number of rows in the call, which float64 rounded to float32 does not show."""
  total = len(frames)
  win = _window(spec)
  fb = melfilters.filterbank(spec.mel_filters, spec.sample_rate, spec.n_fft, spec.n_mels,
                             float(spec.fmin), float(spec.fmax))
  fb64 = np.asarray(fb.T, np.float64)
  out = np.empty((total, spec.n_mels), np.float32)
  for start in range(0, total, _CHUNK_FRAMES):
    stop = min(start + _CHUNK_FRAMES, total)
    # float64 FFT: float32 costs up to 1e-3 dB in quiet bins next to loud tones. Power as
    # re^2 + im^2 skips abs()'s square root.
    z = np.fft.rfft(frames[start:stop] * win, axis=-1)
    power = (z.real * z.real + z.imag * z.imag).astype(np.float32)
    if spec.power != 2.0:
      power = power ** np.float32(spec.power / 2.0)
    out[start:stop] = compress(power.astype(np.float64) @ fb64, spec)
  return out


def split_windows(mel: np.ndarray, spec: FrontendSpec, hop_frames: int,
                  keep_partial: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Cut [T, M] log-mel into model windows [N, frames_per_window, M] and their start frames.

  A clip shorter than one window is padded with the spec's silence value. A trailing partial
  window is dropped unless `keep_partial` (then it is padded), as aiSFX's own blocking does.
  """
  size = spec.frames_per_window
  t = mel.shape[0]
  if t <= size:
    starts = np.array([0])
  else:
    starts = np.arange(0, t - size + 1, hop_frames)
    if keep_partial and starts[-1] + size < t:
      starts = np.append(starts, starts[-1] + hop_frames)
  need = starts[-1] + size
  if need > t:
    pad = np.full((need - t, mel.shape[1]), silence_value(spec), np.float32)
    mel = np.concatenate([mel, pad])
  windows = np.stack([mel[s:s + size] for s in starts])
  return windows, starts
