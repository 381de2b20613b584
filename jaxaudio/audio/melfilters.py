"""Mel filterbanks, each reproducing one reference implementation exactly."""

from __future__ import annotations

import functools

import numpy as np


def _hz_to_htk_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _htk_mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def essentia_htk_unit_sum(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                          fmax: float) -> np.ndarray:
  """Essentia MelBands(warpingFormula='htkMel', weighting='warping', normalize='unit_sum').

  Band edges are equally spaced in HTK mel; each triangle is linear in mel, spans the bins
  round(f_lo/df) .. round(f_hi/df) inclusive (as Essentia's TriangularBands loops), and is
  scaled so its weights sum to one. Returns (n_mels, n_fft // 2 + 1).
  """
  n_bins = n_fft // 2 + 1
  lo, hi = _hz_to_htk_mel(fmin), _hz_to_htk_mel(fmax)
  edges = _htk_mel_to_hz(lo + (hi - lo) / (n_mels + 1) * np.arange(n_mels + 2))
  bin_hz = (sample_rate / 2.0) / (n_bins - 1)
  bins = np.arange(n_bins) * bin_hz
  weights = np.zeros((n_mels, n_bins))
  for i in range(n_mels):
    f0, f1, f2 = edges[i:i + 3]
    m0, m1, m2 = _hz_to_htk_mel([f0, f1, f2])
    j0 = int(f0 / bin_hz + 0.5)
    j1 = min(int(f2 / bin_hz + 0.5) + 1, n_bins)
    b = bins[j0:j1]
    mb = _hz_to_htk_mel(b)
    up = (b >= f0) & (b < f1)
    down = (b >= f1) & (b < f2)
    weights[i, j0:j1] = np.where(up, (mb - m0) / (m1 - m0), 0.0) + np.where(
        down, (m2 - mb) / (m2 - m1), 0.0)
    total = weights[i].sum()
    if total > 0:
      weights[i] /= total
  return weights


def slaney(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
  """librosa.filters.mel defaults (Slaney mel scale and area normalisation), as PANNs uses."""
  import librosa  # pylint: disable=import-outside-toplevel  (slow import, only when needed)
  return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                             fmax=fmax).astype(np.float64)


@functools.lru_cache(maxsize=16)
def filterbank(kind: str, sample_rate: int, n_fft: int, n_mels: int, fmin: float,
               fmax: float) -> np.ndarray:
  """(n_mels, n_fft//2+1) float64 filterbank, cached: building it is slower than using it."""
  fn = {"essentia_htk_unit_sum": essentia_htk_unit_sum, "slaney": slaney}[kind]
  w = fn(sample_rate, n_fft, n_mels, fmin, fmax)
  w.setflags(write=False)
  return w
