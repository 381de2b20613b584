"""One clip -> model windows. Runs in prepare's worker processes, so it imports no JAX/TF."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import sys
from typing import Any, Iterator

import numpy as np

from jaxaudio.audio import frontend, preprocess
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS, decode, resample
from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.runtime.errors import AudioError
from jaxaudio.runtime.progress import progress

_WINDOW = 16  # tasks in flight per worker: bounds memory (TFDS audio) and keeps cores busy


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


def run_task(task, spec_dict, settings, max_seconds):
  """featurize() of one task tuple (index, path, waveform, rate[, (start, end)]), the form
  Featurizer.map and prepare's Beam workers take them in."""
  i, path, wave, rate, *span = task
  return featurize(i, spec_dict, settings, path=path, waveform=wave, rate=rate,
                   max_seconds=max_seconds, span=span[0] if span else None)


_SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _worker_start_environment():
  """Start spawn workers that are lean and do not oversubscribe the cores.

  - spawn re-imports the parent's main module in every worker: for `python -m
    jaxaudio.prepare` that re-imports JAX and Flax (seconds per worker), and a user's script
    without an `if __name__ == "__main__"` guard would start pools recursively. The worker
    function lives in this importable module, so the main module is hidden while they start.
  - one BLAS thread per worker: with one process per core, multi-threaded BLAS made two
    workers slower than one process (measured 87 vs 111 files/s on 2 cores; 185 with this).
  """
  env = {k: os.environ.get(k) for k in _SINGLE_THREADED}
  os.environ.update({k: "1" for k in _SINGLE_THREADED})
  main = sys.modules.get("__main__")
  saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__")
           if main is not None and k in main.__dict__}
  try:
    if main is not None:
      main.__spec__ = None  # multiprocessing reads it with getattr
    yield
  finally:
    if main is not None:
      main.__dict__.pop("__spec__", None)
      main.__dict__.update(saved)
    for k, v in env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


class Featurizer:
  """Feature extraction on every core: spawned workers (no inherited JAX/TF threads or
  state), bounded chunks so a large TFDS split is never all in memory, results in order.

  Tasks are (index, path or None, waveform or None, rate[, (start, end) segment]), as
  featurize takes them;
  prepare and the search indexer share this pool."""

  def __init__(self, workers: int):
    self.workers = workers
    self._pool = None
    if workers > 1:
      with _worker_start_environment():
        self._pool = multiprocessing.get_context("spawn").Pool(workers)

  def map(self, tasks, spec_dict, settings, total: int = 0, desc: str | None = None,
          max_seconds: float | None = DEFAULT_MAX_SECONDS) -> Iterator[Result]:
    """Results in task order, with progress on stderr (jaxaudio.runtime.progress) when `desc` is
    given. With a pool, a sliding window of `_WINDOW * workers` tasks is in flight, so workers
    keep computing while the caller writes the previous results. Files declaring more than
    `max_seconds` come back as errors, undecoded."""
    with progress(total, desc, "file") as bar:
      for res in self._results(tasks, spec_dict, settings, max_seconds):
        bar.update(1)
        yield res

  def _results(self, tasks, spec_dict, settings, max_seconds) -> Iterator[Result]:
    if self._pool is None:
      for task in tasks:
        yield run_task(task, spec_dict, settings, max_seconds)
      return
    pending: collections.deque = collections.deque()
    for task in tasks:
      pending.append(self._pool.apply_async(run_task, (task, spec_dict, settings, max_seconds)))
      if len(pending) >= _WINDOW * self.workers:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()

  def close(self):
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()


def auto_workers() -> int:
  """Processes for data.workers=0: every core from 4 cores up; in-process below that.

  Measured on 2 cores (bench/bench_data.py, 1200 files): in-process 226 files/s, 2 worker
  processes 173 files/s - the parent's result handling and BLAS threads compete for the same
  two cores - while featurization alone scales 1.64x on 2 workers.
  """
  cores = os.cpu_count() or 1
  return cores if cores >= 4 else 1
