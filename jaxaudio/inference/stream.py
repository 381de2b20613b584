"""Live detection on a stream of audio: windows as the samples arrive, events as they end.

A Stream takes PCM blocks of any size at the model's rate and gives back, per block, the
windows that became complete and the events that ended. It cuts exactly what the offline
path cuts (jaxaudio.audio.featurize, then Predictor): the same STFT frames at the same
sample positions (the frontend's own padding at the start, and at the end on `close`), the
same windows at the run's hop, the same window probabilities, and events by the rule
detect_events uses (each window stands for the middle hop of its span; consecutive windows at
or above the class threshold are one event), so a sound is reported once, when its run of
windows ends: at most one window and one hop after the event's end.

What a stream cannot do that a file can: file-level preprocessing needs the whole file. Peak
(or RMS) loudness normalisation is replaced by a running one (`loudness="running"`: the gain
that brings the loudest sample so far to the model's target; it only ever falls), or left out
(`"none"`, for audio already at the training level — then windows equal the offline ones);
silence trimming and spectral gating (data.trim_db, data.denoise) are not applied. Resampling
is the caller's (predict --stream runs soxr's streaming resampler in front).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import numpy as np

from jaxaudio.audio import featurize, frontend
from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.inference.predictor import Event
from jaxaudio.models.outputs import in_batches, pow2, probabilities

LOUDNESS_MODES = ("running", "none")
_SILENT = 1e-12   # a level below this is digital silence (as preprocess.normalise_loudness)


@dataclasses.dataclass
class Windows:
  """Windows that became complete: start and end seconds, probabilities [N, classes]."""

  start: np.ndarray
  end: np.ndarray
  probabilities: np.ndarray


class _Frames:
  """Log-mel frames of a growing signal, equal to frontend.log_mel of the whole signal: frame
  j is padded[j*hop : j*hop + n_fft] of the signal with the frontend's padding (zeros, or
  torchlibrosa's reflection, whose start is known once half a frame of samples came)."""

  def __init__(self, spec: FrontendSpec):
    self.spec, self.half = spec, spec.n_fft // 2
    self.buf = np.zeros(self.half, np.float32) if spec.framing == "essentia" else None
    self.raw = np.zeros(0, np.float32)   # reflect framing: samples until the padding is known
    self.offset = 0                       # index in the padded signal of buf[0]
    self.samples = 0
    self.done = 0                         # frames given out

  def push(self, x: np.ndarray) -> np.ndarray:
    self.samples += len(x)
    if self.buf is None:
      self.raw = np.concatenate([self.raw, x])
      if len(self.raw) <= self.half:
        return np.zeros((0, self.spec.n_mels), np.float32)
      self.buf, self.raw = np.concatenate([self.raw[self.half:0:-1], self.raw]), None
    else:
      self.buf = np.concatenate([self.buf, x])
    return self._ready(None)

  def close(self) -> np.ndarray:
    """The last frames, with the frontend's end padding."""
    spec = self.spec
    if self.buf is None:
      raise ValueError(f"reflect padding needs more than {self.half} samples, got "
                       f"{self.samples}")
    if spec.framing == "essentia":
      tail = np.zeros(spec.n_fft + spec.hop_length, np.float32)
    else:
      tail = self.buf[len(self.buf) - self.half - 1:len(self.buf) - 1][::-1]
    self.buf = np.concatenate([self.buf, tail])
    return self._ready(frontend.num_frames(self.samples, spec))

  def _ready(self, total: int | None) -> np.ndarray:
    spec = self.spec
    hop, n_fft = spec.hop_length, spec.n_fft
    upto = (self.offset + len(self.buf) - n_fft) // hop + 1     # frames wholly present
    if total is not None:
      upto = min(upto, total)
    if upto <= self.done:
      return np.zeros((0, spec.n_mels), np.float32)
    a = self.done * hop - self.offset
    framed = np.lib.stride_tricks.sliding_window_view(self.buf[a:], n_fft)[::hop]
    out = frontend.frames_to_log_mel(framed[:upto - self.done], spec)
    self.done = upto
    # keep a frame's worth before the next frame: the end reflection reads the last samples
    drop = max(0, self.done * hop - self.offset - n_fft)
    self.buf, self.offset = self.buf[drop:], self.offset + drop
    return out


class Stream:
  """Windows and events of one live stream (see the module docstring).

  `model(mel [B, frames, mels]) -> {"logits", ...}` and `meta` as for Predictor; `thresholds`
  [classes] are the event cuts; `hop` a fraction of a window (default the training data's)."""

  def __init__(self, model: Callable[[np.ndarray], dict[str, np.ndarray]], meta: dict[str, Any],
               thresholds: np.ndarray, hop: float | None = None, loudness: str = "running",
               batch_size: int = 64):
    if loudness not in LOUDNESS_MODES:
      raise ValueError(f"loudness={loudness!r} is not one of {', '.join(LOUDNESS_MODES)}")
    self.model, self.batch_size = model, batch_size
    self.classes = list(meta["classes"])
    self.multi_label = bool(meta["multi_label"])
    self.spec = FrontendSpec.from_dict(meta["frontend"])
    self.settings = featurize.Settings(**meta.get("settings", {}))
    if hop is not None:
      self.settings = dataclasses.replace(self.settings, window_hop=float(hop))
    self.thresholds = np.asarray(thresholds, np.float64)
    self.loudness = loudness
    self.size = self.spec.frames_per_window
    self.hop_frames = max(1, int(round(self.size * self.settings.window_hop)))
    self.window_seconds = self.spec.window_seconds
    self.hop_seconds = self.hop_frames * self.spec.hop_length / self.spec.sample_rate
    self._frames = _Frames(self.spec)
    self._mel = np.zeros((0, self.spec.n_mels), np.float32)   # frames from _mel_start on
    self._mel_start = 0
    self._next = 0                      # index of the next window
    self._peak = 0.0
    self._open: dict[int, list[float]] = {}    # class -> [start, peak] of the running event
    self._last_start: float | None = None
    self._samples = 0
    self.seconds = 0.0

  # -- samples -> windows -------------------------------------------------------------------
  def _gain(self, x: np.ndarray) -> np.ndarray:
    if self.loudness == "none" or self.settings.loudness == "none" or not len(x):
      return x
    self._peak = max(self._peak, float(np.max(np.abs(x))))
    if self._peak < _SILENT:
      return x
    return (x * (10.0 ** (self.settings.loudness_db / 20.0) / self._peak)).astype(np.float32)

  def _start_of(self, i: int) -> float:
    # as featurize words offsets: float32 seconds of the window's first frame
    return float(np.float32(i * self.hop_frames * self.spec.hop_length / self.spec.sample_rate))

  def _take(self, final: bool) -> list[tuple[int, np.ndarray]]:
    t = self._mel_start + len(self._mel)
    out = []
    while self._next * self.hop_frames + self.size <= t:
      a = self._next * self.hop_frames - self._mel_start
      out.append((self._next, self._mel[a:a + self.size]))
      self._next += 1
    if final:   # split_windows(keep_partial=True): one padded window past the last full one
      first = self._next * self.hop_frames
      if (self._next == 0) or (first < t and first - self.hop_frames + self.size < t):
        a = first - self._mel_start
        part = self._mel[a:]
        pad = np.full((self.size - len(part), self.spec.n_mels),
                      frontend.silence_value(self.spec), np.float32)
        out.append((self._next, np.concatenate([part, pad])))
        self._next += 1
    keep_from = self._next * self.hop_frames - self._mel_start
    if keep_from > 0:
      self._mel, self._mel_start = self._mel[keep_from:], self._mel_start + keep_from
    return out

  def _score(self, cut: list[tuple[int, np.ndarray]]) -> Windows:
    if not cut:
      empty = np.zeros(0)
      return Windows(empty, empty, np.zeros((0, len(self.classes)), np.float32))
    mel = np.stack([w for _, w in cut]).astype(np.float16)   # as featurize stores windows
    batch = min(self.batch_size, pow2(len(mel)))
    logits = in_batches(lambda x: self.model(x)["logits"], mel, batch, len(self.classes))
    start = np.array([self._start_of(i) for i, _ in cut], np.float64)
    return Windows(start, start + self.window_seconds, probabilities(logits, self.multi_label))

  # -- windows -> events --------------------------------------------------------------------
  def _events(self, w: Windows, final: bool) -> list[Event]:
    slack = max(self.window_seconds - self.hop_seconds, 0.0) / 2.0
    ended = []
    for k, start in enumerate(w.start):
      own_lo = start if self._last_start is None else start + slack
      for j, name in enumerate(self.classes):
        p = float(w.probabilities[k, j])
        if p >= self.thresholds[j]:
          if j in self._open:
            self._open[j][1] = max(self._open[j][1], p)
          else:
            self._open[j] = [own_lo, p]
        elif j in self._open:
          lo, peak = self._open.pop(j)
          ended.append(Event(name, float(lo), float(min(self._last_start + slack
                                                        + self.hop_seconds, self.seconds)),
                             float(peak)))
      self._last_start = float(start)
    if final and self._last_start is not None:
      end = min(self._last_start + self.window_seconds, self.seconds)
      for j in sorted(self._open):
        lo, peak = self._open[j]
        ended.append(Event(self.classes[j], float(lo), float(end), float(peak)))
      self._open.clear()
    return sorted(ended, key=lambda e: (e.start, e.label))

  def push(self, samples: np.ndarray) -> tuple[Windows, list[Event]]:
    """Feed mono float32 samples at the model's rate; returns (new windows, ended events)."""
    x = self._gain(np.asarray(samples, np.float32).reshape(-1))
    self._samples += len(x)
    self.seconds = self._samples / self.spec.sample_rate
    self._mel = np.concatenate([self._mel, self._frames.push(x)])
    w = self._score(self._take(final=False))
    return w, self._events(w, final=False)

  def close(self) -> tuple[Windows, list[Event]]:
    """The end of the stream: the last windows (the end padded as offline) and every event
    still running."""
    self._mel = np.concatenate([self._mel, self._frames.close()])
    w = self._score(self._take(final=True))
    return w, self._events(w, final=True)

  def run(self, blocks) -> Iterator[tuple[Windows, list[Event]]]:
    """push() each block of an iterable, then close()."""
    for block in blocks:
      yield self.push(block)
    yield self.close()


PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def pcm_blocks(source, fmt: str = "s16le", channels: int = 1, rate: int = 0,
               model_rate: int = 0, block_seconds: float = 0.1) -> Iterator[np.ndarray]:
  """Mono float32 blocks at `model_rate` from raw interleaved PCM read from the binary file
  `source` (stdin: `arecord -f S16_LE -c 1 -r 16000 -t raw` or `sox -d -t raw -` pipe into
  it) as it arrives: s16le as int16 / 32768 (what a 16-bit WAV decodes to), f32le as is;
  channels averaged; resampled from `rate` with soxr's streaming resampler when it differs."""
  if fmt not in PCM_FORMATS:
    raise ValueError(f"stream format {fmt!r} is not one of {', '.join(PCM_FORMATS)}")
  dtype = PCM_FORMATS[fmt]
  frame = dtype.itemsize * channels
  rate = rate or model_rate
  want = max(1, int(rate * block_seconds)) * frame
  resampler = None
  if rate != model_rate:
    import soxr  # pylint: disable=import-outside-toplevel  (only a resampled stream needs it)
    resampler = soxr.ResampleStream(rate, model_rate, 1, dtype="float32", quality="HQ")
  held = b""
  while True:
    chunk = source.read1(want) if hasattr(source, "read1") else source.read(want)
    last = not chunk
    data = held + (chunk or b"")
    usable = len(data) - len(data) % frame
    data, held = data[:usable], data[usable:]
    x = np.frombuffer(data, dtype).astype(np.float32)
    if dtype.kind == "i":
      x /= 32768.0
    if channels > 1:
      x = x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    if resampler is not None:
      x = resampler.resample_chunk(x, last=last)
    if len(x):
      yield x
    if last:
      return


class DeviceInput:
  """A PortAudio input device (a microphone, or any ALSA/CoreAudio/WASAPI capture device
  PortAudio lists) read as the raw PCM file pcm_blocks takes: `read(n)` returns the next
  whole frames of at most n bytes as they are captured, b"" once `seconds` of audio were
  read or stop() was called (Ctrl-C), so the stream closes and flushes its open events.

  Needs the PortAudio library (Debian: libportaudio2) and the `sounddevice` package
  (`pip install 'jaxaudio[mic]'`); `device` is a name or index from
  `python -m sounddevice`, "default" the system's default input."""

  def __init__(self, device: str, fmt: str, channels: int, rate: int, seconds: float = 0.0):
    try:   # only a device stream needs PortAudio: imported here, not with the module
      import sounddevice  # pylint: disable=import-outside-toplevel
    except (ImportError, OSError) as err:
      raise RuntimeError(f"reading a microphone needs PortAudio and sounddevice ({err}); "
                         "install them (apt install libportaudio2; pip install "
                         "'jaxaudio[mic]'), or pipe PCM into stdin instead") from None
    self.frame = PCM_FORMATS[fmt].itemsize * channels
    self.left = int(round(seconds * rate)) if seconds else None
    self._stopped = False
    name: str | int | None = None if device == "default" else (
        int(device) if device.isdigit() else device)
    try:
      self.stream = sounddevice.RawInputStream(
          samplerate=rate, channels=channels, device=name,
          dtype={"s16le": "int16", "f32le": "float32"}[fmt])
      self.stream.start()
    except (sounddevice.PortAudioError, ValueError) as err:
      raise RuntimeError(f"cannot open input device {device!r} at {rate} Hz x{channels} "
                         f"({err}); list the devices with python -m sounddevice") from None

  def stop(self) -> None:
    self._stopped = True

  def read(self, n: int) -> bytes:
    frames = max(1, n // self.frame)
    if self.left is not None:
      frames = min(frames, self.left)
    if self._stopped or frames == 0:
      self.close()
      return b""
    data, _ = self.stream.read(frames)   # blocks until captured; an overflow drops input
    if self.left is not None:
      self.left -= frames
    return bytes(data)

  def close(self) -> None:
    if not self.stream.closed:
      self.stream.stop()
      self.stream.close()
