"""One clip -> model windows. Runs in prepare's worker processes, so it imports no JAX/TF."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxaudio.audio import frontend, preprocess
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS, decode, resample
from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.errors import AudioError


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything besides the FrontendSpec that changes the features (part of the cache key)."""

  loudness: str = "peak"          # peak | rms | none
  loudness_db: float = -1.0       # target: peak dBFS, or RMS dBFS
  denoise: float = 0.0            # spectral gating strength, 0 = off
  trim_db: float = 0.0            # trim leading/trailing silence below this, 0 = off
  window_hop: float = 0.5         # hop between windows of a long clip, fraction of a window
  min_seconds: float = 0.1        # shorter clips are skipped as too short


@dataclasses.dataclass
class Result:
  index: int
  windows: np.ndarray | None = None   # float16 [N, frames, mels]
  offsets: np.ndarray | None = None   # seconds, [N]
  seconds: float = 0.0                # duration as decoded
  source_rate: int = 0
  trimmed: float = 0.0                # seconds of leading silence cut before the windows
  error: str | None = None


def _as_float(x: np.ndarray) -> np.ndarray:
  """Integer PCM -> [-1, 1]. TFDS Audio features keep 16-bit samples in int64 tensors, so the
  scale is the narrowest PCM width (16, 24, 32 bit) that holds the values, not the dtype's."""
  if x.dtype.kind not in "iu":
    return x.astype(np.float32)
  peak = int(np.max(np.abs(x.astype(np.int64)))) if x.size else 0
  bits = next((b for b in (16, 24, 32) if peak <= 2 ** (b - 1)), 8 * x.dtype.itemsize)
  return (x.astype(np.float64) / 2.0 ** (bits - 1)).astype(np.float32)


def featurize(index: int, spec_dict: dict[str, Any], settings: Settings,
              path: str | None = None, waveform: np.ndarray | None = None,
              rate: int = 0, max_seconds: float | None = DEFAULT_MAX_SECONDS,
              span: tuple[float, float] | None = None) -> Result:
  """Decode (or take `waveform` at `rate`), clean up and cut into log-mel windows.

  Bad audio comes back as Result.error, one sentence, so a worker never dies on a file; a
  file declaring more than `max_seconds` is refused before it is decoded (jaxaudio.audio.io).
  `span` (start, end seconds) takes only that segment of the file: offsets count from it.
  """
  spec = FrontendSpec.from_dict(spec_dict)
  try:
    if path is not None:  # decoded once, resampled as it decodes; its rate goes into the report
      x, rate = decode(path, spec.sample_rate, max_seconds, span)
    else:
      x = _as_float(np.asarray(waveform)).reshape(-1) if waveform is not None else np.zeros(0)
      if x.size == 0:
        raise AudioError(f"example {index}: empty waveform; drop it from the dataset.")
      if not np.all(np.isfinite(x)):
        raise AudioError(f"example {index}: NaN or infinite samples; drop it from the dataset.")
      if max_seconds is not None and len(x) > max_seconds * rate:
        raise AudioError(f"example {index}: {len(x) / rate:.0f} s is longer than "
                         f"data.max_seconds={max_seconds:g}; drop it or raise the limit.")
      x = resample(x, rate, spec.sample_rate)
    seconds = len(x) / spec.sample_rate
    lo = 0
    if settings.trim_db > 0:
      lo, hi = preprocess.trim_bounds(x, settings.trim_db)
      x = x[lo:hi]
    if len(x) / spec.sample_rate < settings.min_seconds:
      raise AudioError(f"{path or f'example {index}'}: {len(x) / spec.sample_rate:.3f} s is "
                       f"shorter than data.min_seconds={settings.min_seconds}; drop it or "
                       "lower the limit.")
    if settings.denoise > 0:
      x = preprocess.spectral_gate(x, spec.sample_rate, settings.denoise)
    x = preprocess.normalise_loudness(x, settings.loudness, settings.loudness_db)
    mel = frontend.log_mel(x, spec)
    hop = max(1, int(round(spec.frames_per_window * settings.window_hop)))
    windows, starts = frontend.split_windows(mel, spec, hop, keep_partial=True)
  except AudioError as err:
    return Result(index=index, error=str(err))
  except (ValueError, MemoryError) as err:
    return Result(index=index, error=f"{path or f'example {index}'}: {err}")
  return Result(index=index, windows=windows.astype(np.float16),
                offsets=(starts * spec.hop_length / spec.sample_rate).astype(np.float32),
                seconds=seconds, source_rate=rate, trimmed=lo / spec.sample_rate)
