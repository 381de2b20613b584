"""One micro-batcher for the server's forward passes: the windows of every request waiting at
that moment run as one pass, in power-of-two chunks without padding, so a handful of
programs compiled at start serve every load, and a full queue refuses at once (Busy) instead
of growing memory. bench/bench_serve.py measures it against one lock per request."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from jaxaudio.models import outputs
from jaxaudio.runtime.errors import JaxAudioError

log = logging.getLogger("jaxaudio")

# (windows per forward pass, ms the batcher waits for more requests' windows) by backend. On
# this project's 2-core CPU aiSFX costs about the same per window at any batch size (29.5 ms
# at 1, 23-24 ms at 4-16), so large batches only make requests finish in bursts: 16 clients
# x 128 uploads gave p50 0.58x, p95 0.51x of the lock path at (64, 2 ms) and 1.01x / 1.40x at
# (4, 0) (bench/bench_serve.py); accelerators gain from large batches.
BATCH_DEFAULTS = {"cpu": (4, 0.0)}
ACCELERATOR_BATCH = (64, 2.0)
DEFAULT_MAX_BATCH, DEFAULT_BATCH_WINDOW_MS = ACCELERATOR_BATCH
DEFAULT_MAX_QUEUED = 64          # forward passes waiting; more are refused with 503


class Busy(Exception):
  """The batcher's queue is full: the request is refused (503) rather than queued."""


@dataclasses.dataclass
class _Job:
  model: Any                 # an exported model: mel -> {"embedding", "logits"}
  windows: np.ndarray        # float32 [N, frames, mels]; N = 0: compile (Batcher.warm)
  future: concurrent.futures.Future


_STOP = object()


def pow2_chunks(n: int, max_batch: int) -> list[tuple[int, int]]:
  """[start, end) spans covering n rows, each a power of two <= max_batch long, longest
  first: the batch sizes of the binary digits of n, so no row is padding (a pass of 17
  windows padded to 32 nearly doubles the work where, as on a CPU, a pass costs the same
  per window at any batch size) and still only log2(max_batch) + 1 programs compile."""
  spans, start = [], 0
  while start < n:
    size = min(max_batch, 1 << ((n - start).bit_length() - 1))
    spans.append((start, start + size))
    start += size
  return spans


class Batcher:
  """Forward passes of concurrent requests, batched: `run(model, windows)` queues a
  request's windows and waits; one worker thread takes the first waiting job, waits up to
  `window_ms` for more (of the same model, up to `max_batch` windows together), runs them
  as one pass of power-of-two chunks (pow2_chunks) and hands each job its rows. At most
  `max_queued` jobs wait; past that `run` raises Busy at once, so load cannot grow memory."""

  def __init__(self, max_batch: int = DEFAULT_MAX_BATCH,
               window_ms: float = DEFAULT_BATCH_WINDOW_MS,
               max_queued: int = DEFAULT_MAX_QUEUED):
    if max_batch < 1 or outputs.pow2(max_batch) != max_batch:
      raise JaxAudioError(f"--max_batch={max_batch} is not a power of two; pass e.g. 64.")
    self.max_batch, self.wait_s = max_batch, max(0.0, window_ms) / 1e3
    self._queue: queue.Queue = queue.Queue(max(1, max_queued))
    self.batches = 0                  # forward passes run (for tests and the bench)
    self._thread = threading.Thread(target=self._work, name="jaxaudio-batcher", daemon=True)
    self._thread.start()

  def run(self, model, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], logits [N, classes]) of `windows` [N, frames, mels]."""
    if not len(windows):   # nothing to run (and a job without windows means warm())
      dim = int(model.meta["embedding_dim"])
      return np.zeros((0, dim), np.float32), np.zeros((0, len(model.meta["classes"])), np.float32)
    job = _Job(model, np.asarray(windows, np.float32), concurrent.futures.Future())
    try:
      self._queue.put_nowait(job)
    except queue.Full as err:
      raise Busy() from err
    return job.future.result()

  def warm(self, model, window_shape: tuple[int, ...]) -> None:
    """Compiles `model` for every batch size the worker uses (1, 2, 4 .. max_batch), in the
    worker, ahead of the jobs queued after this call: no request waits for a compilation
    (about a second per size for aiSFX on a CPU) and memory is at its working size early."""
    self._queue.put(_Job(model, np.zeros((0,) + tuple(window_shape), np.float32),
                         concurrent.futures.Future()))

  def close(self) -> None:
    """Stops the worker once the jobs queued before this call have run."""
    self._queue.put(_STOP)
    self._thread.join()

  def _work(self) -> None:
    held = None
    while True:
      first = held if held is not None else self._queue.get()
      held = None
      if first is _STOP:
        return
      if not len(first.windows):   # warm()
        self._compile(first)
        continue
      group, n = [first], len(first.windows)
      deadline = time.monotonic() + self.wait_s
      while n < self.max_batch:
        try:
          job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if (job is _STOP or job.model is not first.model or not len(job.windows)
            or n + len(job.windows) > self.max_batch):
          held = job
          break
        group.append(job)
        n += len(job.windows)
      self._run(group)

  def _compile(self, job: _Job) -> None:
    try:
      for size in (1 << i for i in range(self.max_batch.bit_length())):
        job.model(np.zeros((size,) + job.windows.shape[1:], np.float32))
      job.future.set_result(None)
    except Exception as err:  # pylint: disable=broad-except  # the first request meets it
      log.warning("could not compile the model ahead of requests: %s", err)
      job.future.set_exception(err)

  def _run(self, group: list[_Job]) -> None:
    model = group[0].model
    dim = int(model.meta["embedding_dim"])

    def both(x):
      out = model(x)
      return np.concatenate([out["embedding"], out["logits"]], axis=1)

    try:
      windows = np.concatenate([job.windows for job in group])
      rows = np.concatenate([both(windows[a:b]) for a, b in pow2_chunks(len(windows),
                                                                        self.max_batch)])
      self.batches += 1
    except Exception as err:  # pylint: disable=broad-except  # each waiting request gets it
      for job in group:
        job.future.set_exception(err)
      return
    start = 0
    for job in group:
      part = rows[start:start + len(job.windows)]
      job.future.set_result((part[:, :dim], part[:, dim:]))
      start += len(job.windows)


class BatchedModel:
  """A model callable (mel -> {"embedding", "logits"}) whose passes go through a Batcher, so
  a Predictor's classification shares the batched forward passes."""

  def __init__(self, batcher: Batcher, model):
    self.batcher, self.model = batcher, model

  def __call__(self, mel: np.ndarray) -> dict[str, np.ndarray]:
    emb, logits = self.batcher.run(self.model, mel)
    return {"embedding": emb, "logits": logits}
