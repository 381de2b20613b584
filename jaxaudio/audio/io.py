"""Decode any audio file to a mono float32 waveform at a target sample rate, within bounds.

Bounds: a file's header is read before any sample is: a declared sample rate outside
[MIN_RATE, MAX_RATE] or a duration over `max_seconds` is refused with one sentence, so a tiny
file whose header says 1 Hz (it would resample to hours of audio) cannot exhaust memory.
Decoding runs in blocks of at most BLOCK_BYTES whatever the channel count, mixed to mono as
it goes, and `load_audio` resamples block by block (soxr's stream gives the same samples as
its one-shot resampler, bit for bit), so a file costs 4 bytes per mono sample it yields and
per sample at its own rate (read_audio), or only per sample at the target rate (load_audio).

Level: Essentia's EasyLoader (the aiSFX reference path) leaves the level of a file at the
model's rate untouched (measured gain 1.0; see tests/golden/README.md), so nothing is scaled
here. Resampling uses soxr 'HQ'; Essentia uses libsamplerate, and the measured log-mel
difference between the two is recorded in tests/golden/README.md.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings

import numpy as np

from jaxaudio.runtime.errors import AudioError

MIN_RATE = 1_000        # Hz: below any real recording's rate (telephone audio is 8 kHz)
MAX_RATE = 768_000      # Hz: the highest rate audio interfaces record at
DEFAULT_MAX_SECONDS = 3600.0   # per file; data.max_seconds, --max_seconds raise it
BLOCK_BYTES = 1 << 24   # one decoded block of interleaved samples, any channel count

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


def _check_rate(path: str, rate: float) -> None:
  if not MIN_RATE <= rate <= MAX_RATE:
    raise AudioError(f"{path}: the header declares a sample rate of {rate:g} Hz, outside "
                     f"{MIN_RATE}-{MAX_RATE} Hz; the file is damaged or mislabelled: re-export "
                     "it at its real rate.")


def _check_seconds(path: str, seconds: float, max_seconds: float | None) -> None:
  if max_seconds is not None and seconds > max_seconds:
    raise AudioError(f"{path}: {seconds:.0f} s of audio is longer than the limit of "
                     f"{max_seconds:.0f} s per file; cut it into shorter files or raise the "
                     "limit (data.max_seconds, or --max_seconds).")


def _check_span(path: str, span: tuple[float, float] | None, seconds: float
                ) -> tuple[float, float]:
  """The [start, end) seconds to decode: the whole file, or a segment that starts inside it
  (an end past the file's end is its end)."""
  if span is None:
    return 0.0, seconds
  start, end = span
  if not 0.0 <= start < end or start >= seconds:
    raise AudioError(f"{path}: the segment {start:g}-{end:g} s is not inside the file's "
                     f"{seconds:.3f} s; fix the segment's start and end.")
  return start, min(end, seconds)


def _blocks_soundfile(path: str, max_seconds: float | None,
                      span: tuple[float, float] | None = None):
  """(rate, iterator of mono float32 blocks) through libsndfile; None if it cannot open it.
  With `span`, only that segment is read (a seek, not a decode of what comes before)."""
  import soundfile as sf  # pylint: disable=import-outside-toplevel
  try:
    f = sf.SoundFile(path)
  except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
    return None
  rate, frames, channels = f.samplerate, f.frames, max(1, f.channels)
  try:
    _check_rate(path, rate)
    start, end = _check_span(path, span, frames / rate)
    _check_seconds(path, end - start, max_seconds)
    first, last = int(round(start * rate)), min(frames, int(round(end * rate)))
    if first:
      f.seek(first)
  except AudioError:
    f.close()
    raise
  block = max(1, BLOCK_BYTES // (4 * channels))

  def blocks():
    left = last - first
    with f:
      while left > 0:
        try:
          data = f.read(min(block, left), dtype="float32", always_2d=True)
          left -= len(data)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
          raise AudioError(f"{path}: cannot decode audio past {f.tell() / rate:.1f} s ({err}): "
                           "the file is corrupt or truncated; re-export it or remove it.") from err
        if not len(data):
          return
        yield data.mean(axis=1)
  return rate, blocks()


def _blocks_audioread(path: str, max_seconds: float | None,
                      span: tuple[float, float] | None = None):
  """(rate, [mono float32]) for formats libsndfile lacks (m4a, wma, ...), through
  audioread/ffmpeg; the header is checked first (rate before duration, which divides by
  it) and the read stops just past the limit."""
  with warnings.catch_warnings():   # audioread's raw backend imports aifc, audioop, sunau
    warnings.simplefilter("ignore")
    import audioread  # pylint: disable=import-outside-toplevel
    import librosa  # pylint: disable=import-outside-toplevel
    with audioread.audio_open(path) as f:
      _check_rate(path, f.samplerate)
      start, end = _check_span(path, span, f.duration)
      _check_seconds(path, end - start, max_seconds)
    duration = None if span is None else end - start
    if max_seconds is not None:
      duration = min(duration or max_seconds + 1.0, max_seconds + 1.0)
    data, rate = librosa.load(path, sr=None, mono=True, dtype=np.float32, offset=start,
                              duration=duration)
  _check_seconds(path, len(data) / rate, max_seconds)  # a header that understated it
  return int(rate), iter([data])


def _open_blocks(path: str, max_seconds: float | None, span: tuple[float, float] | None):
  """(source rate, iterator of mono float32 blocks), header checked, or one AudioError."""
  opened = _blocks_soundfile(path, max_seconds, span)
  if opened is not None:
    return opened
  try:
    return _blocks_audioread(path, max_seconds, span)
  except AudioError:
    raise
  except Exception as err:  # pylint: disable=broad-except
    raise AudioError(f"{path}: cannot decode audio ({type(err).__name__}: {err}): the file "
                     "is corrupt or in an unsupported format; re-export it or remove it."
                     ) from err


def _checked_path(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioError(f"{path}: no such audio file; check the path.")
  if os.path.getsize(path) == 0:
    raise AudioError(f"{path}: the file is empty; remove it or replace it with the audio.")
  missing = _wav_missing_bytes(path) if path.lower().endswith((".wav", ".wave")) else 0
  if missing:
    raise AudioError(f"{path}: the WAV file is truncated ({missing} bytes of audio missing); "
                     "re-copy or re-export it.")
  return path


def _checked_samples(path: str, x: np.ndarray) -> np.ndarray:
  if x.size == 0:
    raise AudioError(f"{path}: decodes to zero samples; remove it or re-export the audio.")
  if not np.all(np.isfinite(x)):
    raise AudioError(f"{path}: holds NaN or infinite samples; re-export the audio.")
  return x


def _concat(parts: list[np.ndarray]) -> np.ndarray:
  return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  if sr_in == sr_out:
    return x
  import soxr  # pylint: disable=import-outside-toplevel
  return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)


def read_audio(path: str | os.PathLike, max_seconds: float | None = DEFAULT_MAX_SECONDS,
               span: tuple[float, float] | None = None) -> tuple[np.ndarray, int]:
  """(mono float32 waveform, its own sample rate); AudioError names the file and the fix.
  `max_seconds=None` lifts the duration limit (the rate range always holds); `span` reads
  only the segment [start, end) seconds (the limit then applies to the segment)."""
  path = _checked_path(path)
  rate, blocks = _open_blocks(path, max_seconds, span)
  return _checked_samples(path, _concat(list(blocks))), int(rate)


def decode(path: str | os.PathLike, sample_rate: int,
           max_seconds: float | None = DEFAULT_MAX_SECONDS,
           span: tuple[float, float] | None = None) -> tuple[np.ndarray, int]:
  """(mono float32 waveform at `sample_rate`, the file's own rate), resampled block by block
  as it decodes, so the file's own rate is never held whole; `span` as in read_audio."""
  path = _checked_path(path)
  rate, blocks = _open_blocks(path, max_seconds, span)
  if rate == sample_rate:
    return _checked_samples(path, _concat(list(blocks))), int(rate)
  import soxr  # pylint: disable=import-outside-toplevel
  stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
  out, block = [], next(blocks, None)
  while block is not None:
    following = next(blocks, None)
    out.append(stream.resample_chunk(block, last=following is None))
    block = following
  return _checked_samples(path, _concat(out)), int(rate)


def load_audio(path: str | os.PathLike, sample_rate: int,
               max_seconds: float | None = DEFAULT_MAX_SECONDS) -> np.ndarray:
  """Mono float32 waveform of `path` at `sample_rate`."""
  return decode(path, sample_rate, max_seconds)[0]


def _not_a_file(path: str) -> str | None:
  """Why `path` is no regular file to decode, or None when it is one."""
  try:
    st = os.stat(path)
  except OSError as err:
    return (f"the symlink is broken or loops ({err.strerror})" if os.path.islink(path)
            else f"cannot be read ({err.strerror})")
  return None if stat.S_ISREG(st.st_mode) else "is not a regular file (a pipe, socket or device)"


def audio_files(path: str, skipped: list[dict[str, str]] | None = None) -> list[str]:
  """The audio file itself, or every audio file under a folder (sorted, hidden ones skipped).

  Entries that cannot be audio files — dangling symlinks, symlink loops, named pipes and
  other non-regular files — are left out; with `skipped`, each gets a {"path", "reason"}
  there (one sentence) so a command reports them as it reports undecodable files."""
  if os.path.isfile(path):
    return [path]
  found = []
  for root, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(files):
      if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
        continue
      full = os.path.join(root, name)
      reason = _not_a_file(full)
      if reason is None:
        found.append(full)
      elif skipped is not None:
        skipped.append({"path": full, "reason": f"{full}: {reason}; fix or remove it."})
  return found
