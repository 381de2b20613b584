"""The index behind the search API: loaded once and kept warm, reloaded in the background of
the old one when `search index` replaces its manifest (or, for a sharded index, its list or
any shard's manifest) (until the new one is complete, and if
it cannot be loaded, the previous index keeps answering). Files are named by ids, a hash of
their path, so responses need not show where the index or its files live."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time

from jaxaudio.inference.predictor import Predictor
from jaxaudio.runtime.errors import JaxAudioError, SearchIndexError
from jaxaudio.search import shards, store
from jaxaudio.search.searcher import Searcher

log = logging.getLogger("jaxaudio")

RELOAD_CHECK_SECONDS = 0.5


def file_id(path: str) -> str:
  """Stable id of an indexed file (its path's hash): ids survive reloads, paths stay private."""
  return hashlib.sha256(path.encode()).hexdigest()[:20]


@dataclasses.dataclass
class Loaded:
  """One consistent generation of the index: searchers, model, file table."""

  stamp: tuple
  exact: Searcher
  approx: Searcher | None
  predictor: Predictor
  files: dict[str, store.Entry]      # id -> entry
  loaded_at: float


def _stamp(path: str) -> tuple:
  """What changes when the index on disk does: its manifest's identity, and for a sharded
  index every shard's too, so a commit to one shard reloads the server like a new list."""
  stamps = []
  for where in [path, *(shards.shard_paths(path) or [])]:
    st = os.stat(os.path.join(where, store.MANIFEST))
    stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
  return tuple(stamps)


def _load(path: str, ef: int, nprobe: int | None = None) -> Loaded:
  stamp = _stamp(path)
  exact = Searcher(path)
  approx = (Searcher(path, use_ann=True, ef=ef, share=exact, nprobe=nprobe)
            if exact.manifest.ann else None)
  files = {file_id(e.path): e for e in exact.rows.files}
  return Loaded(stamp, exact, approx, exact.model.predictor(), files, time.time())


class Service:
  """The index behind the API: loaded once, reloaded when its manifest changes."""

  def __init__(self, index_path: str, use_ann: bool = False, ef: int = 128,
               nprobe: int | None = None):
    self.path = os.path.abspath(index_path)
    self.default_ann, self.ef, self.nprobe = use_ann, ef, nprobe
    self._current = _load(self.path, ef, nprobe)
    if use_ann and self._current.approx is None:
      raise SearchIndexError(f"{self.path} has no approximate index; build it with python -m "
                             "jaxaudio.search index --ann, or serve without --ann.")
    self._checked = time.monotonic()
    self._reload_lock = threading.Lock()
    self.model_lock = threading.Lock()    # batching=False: one forward pass + search at once
    self.search_lock = threading.Lock()   # batching: one search at once (bounded memory)

  def current(self) -> Loaded:
    """The newest complete index: reloads when the manifest on disk has changed."""
    now = time.monotonic()
    if now - self._checked < RELOAD_CHECK_SECONDS:
      return self._current
    self._checked = now
    try:
      stamp = _stamp(self.path)
    except (OSError, ValueError, JaxAudioError):   # a list or shard being rewritten: later
      return self._current
    if stamp == self._current.stamp or not self._reload_lock.acquire(blocking=False):
      return self._current
    try:
      fresh = _load(self.path, self.ef, self.nprobe)
      self._current = fresh
      log.warning("reloaded %s: %d files", self.path, len(fresh.files))
    except (JaxAudioError, OSError, ValueError) as err:  # a rewrite in progress: try later
      log.warning("keeping the loaded index: %s", err)
    finally:
      self._reload_lock.release()
    return self._current
