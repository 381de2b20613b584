"""Decode any audio file to a mono float32 waveform at a target sample rate.

Level: Essentia's EasyLoader (the aiSFX reference path) leaves the level of a file at the
model's rate untouched (measured gain 1.0; see tests/golden/README.md), so nothing is scaled
here. Resampling uses soxr 'HQ'; Essentia uses libsamplerate, and the measured log-mel
difference between the two is recorded in tests/golden/README.md.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np

from jaxaudio.errors import AudioError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
                    ".m4a", ".aac", ".wma", ".caf", ".w64")


def _wav_missing_bytes(path: str) -> int:
  """Bytes the RIFF 'data' chunk declares beyond the end of the file (libsndfile silently
  reads a truncated WAV as a shorter one, so truncation must be checked here)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
      return 0
    fmt = "<I" if head[:4] == b"RIFF" else ">I"
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk = f.read(8)
      (length,) = struct.unpack(fmt, chunk[4:8])
      if chunk[:4] == b"data":
        return max(0, pos + 8 + length - size) if length != 0xFFFFFFFF else 0
      pos += 8 + length + (length & 1)
  return 0


def _decode(path: str) -> tuple[np.ndarray, int]:
  import soundfile as sf  # pylint: disable=import-outside-toplevel
  try:
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    return data.mean(axis=1), int(sr)
  except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as sf_err:
    first = sf_err
  try:  # formats libsndfile lacks (m4a, wma, ...) go through audioread/ffmpeg
    import librosa  # pylint: disable=import-outside-toplevel
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      data, sr = librosa.load(path, sr=None, mono=True, dtype=np.float32)
    return data, int(sr)
  except Exception as err:  # pylint: disable=broad-except
    raise AudioError(f"{path}: cannot decode audio ({first}; {type(err).__name__}): the file is "
                     "corrupt or in an unsupported format; re-export it or remove it.") from err


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  if sr_in == sr_out:
    return x
  import soxr  # pylint: disable=import-outside-toplevel
  return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """(mono float32 waveform, its own sample rate); AudioError names the file and the fix."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioError(f"{path}: no such audio file; check the path.")
  if os.path.getsize(path) == 0:
    raise AudioError(f"{path}: the file is empty; remove it or replace it with the audio.")
  missing = _wav_missing_bytes(path) if path.lower().endswith((".wav", ".wave")) else 0
  if missing:
    raise AudioError(f"{path}: the WAV file is truncated ({missing} bytes of audio missing); "
                     "re-copy or re-export it.")
  x, sr = _decode(path)
  if x.size == 0:
    raise AudioError(f"{path}: decodes to zero samples; remove it or re-export the audio.")
  if not np.all(np.isfinite(x)):
    raise AudioError(f"{path}: holds NaN or infinite samples; re-export the audio.")
  return x, sr


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
  """Mono float32 waveform of `path` at `sample_rate`."""
  x, sr = read_audio(path)
  return resample(x, sr, sample_rate)
