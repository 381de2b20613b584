"""Query-by-example over a search index: audio in, ranked (file, offset, score) out.

A Searcher loads the index once (rows on the device for exact search, or the FAISS graph)
and the model stored in it, then answers any number of queries; the CLI is one query run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from jaxaudio.inference import exported
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS, read_audio
from jaxaudio.audio.featurize import featurize
from jaxaudio.runtime.errors import AudioError, SearchIndexError
from jaxaudio.models.outputs import pow2
from jaxaudio.search import ann, store
from jaxaudio.search.exact import TIE, ExactIndex
from jaxaudio.models.outputs import l2_normalise
from jaxaudio.search.indexer import search_settings

ANN_FANOUT = 8   # approximate search fetches this many rows per result and query window


@dataclasses.dataclass
class Hit:
  file: str
  offset: float     # window start, seconds into the file
  end: float        # window end, seconds (clipped to the file's duration)
  score: float      # cosine similarity, best over the query's windows


def _load_model(path: str, manifest) -> exported.ExportedModel:
  """The exported model stored in the index, checked to be the one that embedded it."""
  model_dir = os.path.join(path, "model")
  try:
    model = exported.load(model_dir)
  except (ValueError, OSError) as err:
    raise SearchIndexError(f"{path}: the model stored in the index is unusable ({err}); "
                           "rebuild the index with --rebuild.") from err
  if model.meta["weights_sha256"] != manifest.model["weights_sha256"]:
    raise SearchIndexError(f"{model_dir} is not the model this index was built with (weights "
                           "sha256 differs); rebuild the index with --rebuild.")
  return model


def rank_candidates(scores: np.ndarray, rows: np.ndarray, file_of_row: np.ndarray, k: int,
                    per_file: bool) -> list[tuple[int, float]]:
  """(row, score) of the best k among approximate search's candidates (scores and rows of
  each query window's neighbours, row -1 for none), ranked as exact search ranks rows: per
  file, files by their best score (ties by file number), each at its first window within
  TIE of that score; per window, by score, ties by row."""
  best: dict[int, float] = {}      # candidate row -> its best score over the query's windows
  for s, r in zip(scores.ravel(), rows.ravel()):
    if r >= 0 and s > best.get(int(r), -np.inf):
      best[int(r)] = float(s)
  if not per_file:
    return sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]
  by_file: dict[int, list[tuple[int, float]]] = {}
  for row, score in best.items():
    by_file.setdefault(int(file_of_row[row]), []).append((row, score))
  top = []
  for f, cands in by_file.items():
    high = max(score for _, score in cands)
    top.append((-high, f, min(row for row, score in cands if score >= high - TIE)))
  return [(row, -neg) for neg, _, row in sorted(top)[:k]]


class Searcher:
  """An opened index. use_ann=True searches the FAISS graph built with `index --ann`."""

  def __init__(self, index_path: str, use_ann: bool = False, ef: int = ann.EF_SEARCH,
               share: Searcher | None = None):
    """`share`: an exact Searcher of the same index whose manifest, model and rows this one
    reuses instead of reading them again (a server holds both kinds)."""
    self.path = os.path.abspath(index_path)
    if share is not None:
      self.manifest, self.model, self.rows = share.manifest, share.model, share.rows
    else:
      self.manifest = store.read_manifest(self.path)
      self.model = _load_model(self.path, self.manifest)
      self.rows = store.load_rows(self.path, self.manifest, embeddings=not use_ann)
    self.spec_dict = self.manifest.model["frontend"]
    self.settings = search_settings(self.manifest.model)
    self.window_seconds = (self.spec_dict["frames_per_window"] * self.spec_dict["hop_length"]
                           / self.spec_dict["sample_rate"])
    self.ef = ef
    self._graph = None
    self._exact = None
    if use_ann:
      if not self.manifest.ann:
        raise SearchIndexError(f"{self.path} has no approximate index; build it with python -m "
                               "jaxaudio.search index --ann, or search without --ann.")
      file = os.path.join(self.path, self.manifest.ann["file"])
      if "spans" not in self.manifest.ann:
        raise SearchIndexError(f"{file} has no row layout in the manifest (an older jaxaudio "
                               "wrote it); run python -m jaxaudio.search index --ann again to "
                               "rebuild it.")
      self._graph = ann.Graph(ann.load(file),
                              ann.live_ids(self.manifest.ann["spans"], self.manifest), file)
    else:
      self._exact = ExactIndex(self.rows.embeddings, self.rows.file_of_row,
                               len(self.rows.files))

  def embed_audio(self, path: str, start: float | None = None, end: float | None = None
                  ) -> np.ndarray:
    """L2-normalised window embeddings [W, D] of a file (or its [start, end) seconds), cut
    and featurised exactly as the index's files were."""
    return self.embed_windows(self.query_windows(path, start, end))

  def query_windows(self, path: str, start: float | None = None, end: float | None = None,
                    max_seconds: float | None = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """Log-mel windows of a file (or its [start, end) seconds) as the index's files were cut:
    the decoding half of embed_audio, which needs no model (a server runs it in parallel).
    A file declaring more than `max_seconds` of audio is refused before it is decoded; an
    end past the file's end means its end."""
    lo = 0.0 if start is None else start
    if not (math.isfinite(lo) and (end is None or math.isfinite(end))):
      raise AudioError(f"{path}: --start={start} --end={end} is not a span of seconds; pass "
                       "finite numbers, 0 <= start < end.")
    x, rate = read_audio(path, max_seconds=max_seconds)
    seconds = len(x) / rate
    hi = seconds if end is None else end
    if not 0 <= lo < hi or lo >= seconds:
      raise AudioError(f"{path}: --start={lo} --end={hi} is not a span inside the file's "
                       f"{seconds:.2f} s; pass 0 <= start < end with start before the end.")
    res = featurize(0, self.spec_dict, self.settings,
                    waveform=x[int(lo * rate):int(min(hi, seconds) * rate)], rate=rate,
                    max_seconds=max_seconds)
    if res.error:
      raise AudioError(res.error.replace("example 0", path))
    return res.windows

  def embed_windows(self, windows: np.ndarray) -> np.ndarray:
    """L2-normalised embeddings of query windows."""
    # A query is a few windows: a batch of the next power of two, not the indexer's 64.
    batch = min(64, pow2(len(windows)))
    return l2_normalise(self.model.embeddings(windows, batch))

  def search(self, queries: list[np.ndarray], k: int = 10, per_file: bool = True
             ) -> list[list[Hit]]:
    """Ranked hits per query ([W_i, D] normalised windows each)."""
    if self._graph is not None:
      return [self._approximate(q, k, per_file) for q in queries]
    scores, rows = self._exact.search(queries, k, per_file)
    return [[self._hit(int(r), float(s)) for s, r in zip(sc, rw)]
            for sc, rw in zip(scores, rows)]

  def _hit(self, row: int, score: float) -> Hit:
    entry = self.rows.files[self.rows.file_of_row[row]]
    offset = float(self.rows.offsets[row])
    return Hit(entry.path, offset, min(offset + self.window_seconds, entry.seconds), score)

  def _approximate(self, windows: np.ndarray, k: int, per_file: bool) -> list[Hit]:
    fetch = min(self.manifest.live_rows, max(k * ANN_FANOUT, 64))
    if fetch == 0:   # every file was deleted: nothing to find, as with exact search
      return []
    scores, rows = self._graph.search(windows, fetch, self.ef)
    return [self._hit(row, score)
            for row, score in rank_candidates(scores, rows, self.rows.file_of_row, k, per_file)]

  def info(self) -> dict[str, Any]:
    return {"index": self.path, "files": len(self.rows.files), "rows": self.manifest.live_rows,
            "model": self.manifest.model["model"],
            "weights_sha256": self.manifest.model["weights_sha256"], "ann": self.manifest.ann}
