"""Optional approximate search for collections that outgrow exact search: FAISS HNSW.

`pip install 'jaxaudio[ann]'` brings faiss-cpu. The graph holds the rows with inner product
(= cosine on the L2-normalised rows). It is kept up to date incrementally, like the
segments: an update appends the new rows to the graph, rows of deleted or changed files stay
in it as dead ids that searches skip (a FAISS IDSelector, so k live rows still come back),
and the graph is rebuilt over the live rows only when more than a quarter of it is dead or
the segments were compacted. The manifest records which segment rows the graph ids are
(`spans`: [segment, start, count] in graph order). Its window-level recall@10 against exact
search is measured after every change, on index rows as queries with the row itself left
out, and stored in the manifest so the user sees what the speed costs.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from jaxaudio.runtime.errors import SearchIndexError
from jaxaudio.search import store

M = 32                 # graph degree: FAISS's recommended range is 16-64
EF_CONSTRUCTION = 128
EF_SEARCH = 128
RECALL_QUERIES = 500
# An update rebuilds a graph whose file is missing, so this repairs a damaged one.
REBUILD = "delete it and run python -m jaxaudio.search index --ann again to rebuild it."


def _faiss():
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise SearchIndexError("approximate search needs faiss-cpu, which is not installed; "
                           "pip install 'jaxaudio[ann]' or search without --ann.") from err
  return faiss


def build(embeddings: np.ndarray, threads: int = 0) -> Any:
  faiss = _faiss()
  if threads:
    faiss.omp_set_num_threads(threads)
  index = faiss.IndexHNSWFlat(embeddings.shape[1], M, faiss.METRIC_INNER_PRODUCT)
  index.hnsw.efConstruction = EF_CONSTRUCTION
  index.hnsw.efSearch = EF_SEARCH
  index.add(np.ascontiguousarray(embeddings, np.float32))
  return index


def save(index: Any, file: str) -> None:
  """Write the graph and fsync it: a manifest will name it (store.write_manifest)."""
  _faiss().write_index(index, file)
  store.fsync_path(file)


def load(file: str) -> Any:
  faiss = _faiss()
  if not os.path.isfile(file):
    raise SearchIndexError(f"{file} is missing; run python -m jaxaudio.search index --ann "
                           "again to rebuild it.")
  try:
    return faiss.read_index(file)
  except RuntimeError as err:
    raise SearchIndexError(f"{file}: the approximate index is unreadable; {REBUILD}") from err


def add(index: Any, embeddings: np.ndarray) -> None:
  """Append rows to the graph; they get the next ids."""
  index.add(np.ascontiguousarray(embeddings, np.float32))


def layout(files: list[store.Entry]) -> tuple[list[list], np.ndarray]:
  """Graph order for a graph built over the files' live rows: segment by segment, so the
  layout stays a few [segment, start, count] spans (adjacent runs merged) however the files
  sort. Returns the spans and the live rows (load_rows order) in graph order."""
  first = np.cumsum([0] + [e.count for e in files])
  spans: list[list] = []
  order = []
  for i in sorted(range(len(files)), key=lambda i: (files[i].segment, files[i].start)):
    e = files[i]
    if spans and spans[-1][0] == e.segment and spans[-1][1] + spans[-1][2] == e.start:
      spans[-1][2] += e.count
    else:
      spans.append([e.segment, e.start, e.count])
    order.append(np.arange(first[i], first[i] + e.count))
  return spans, np.concatenate(order) if order else np.zeros(0, np.int64)


def live_ids(spans: list[list], manifest: store.Manifest) -> np.ndarray:
  """int64 [graph rows]: the live row (load_rows order) each graph id holds, -1 if dead."""
  where: dict[str, np.ndarray] = {name: np.full(rows, -1, np.int64)
                                  for name, rows in manifest.segments.items()}
  pos = 0
  for e in manifest.files:
    if e.segment in where:
      where[e.segment][e.start:e.start + e.count] = np.arange(pos, pos + e.count)
    pos += e.count
  parts = [where[seg][start:start + count] if seg in where else np.full(count, -1, np.int64)
           for seg, start, count in spans]
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class Graph:
  """An HNSW graph whose ids map to an index's live rows; searches skip the dead ids."""

  def __init__(self, index: Any, to_live: np.ndarray, file: str = "the approximate index"):
    if index.ntotal != len(to_live):
      raise SearchIndexError(f"{file} holds {index.ntotal} rows, the manifest says "
                             f"{len(to_live)}; {REBUILD}")
    self.index, self.to_live = index, to_live
    self.dead = int(np.sum(to_live < 0))
    self._params = None
    if self.dead:
      faiss = _faiss()
      # the bitmap must outlive the selector, which only points at it
      self._bitmap = np.packbits(to_live >= 0, bitorder="little")
      self._selector = faiss.IDSelectorBitmap(len(to_live), faiss.swig_ptr(self._bitmap))
      self._params = faiss.SearchParametersHNSW()
      self._params.sel = self._selector

  def search(self, windows: np.ndarray, k: int, ef: int = EF_SEARCH
             ) -> tuple[np.ndarray, np.ndarray]:
    """(scores [W, k], live rows [W, k]) per query window; missing neighbours are -1."""
    windows = np.ascontiguousarray(windows, np.float32)
    if self._params is None:
      self.index.hnsw.efSearch = max(ef, k)
      scores, ids = self.index.search(windows, k)
    else:
      self._params.efSearch = max(ef, k)
      scores, ids = self.index.search(windows, k, params=self._params)
    return scores, np.where(ids >= 0, self.to_live[np.maximum(ids, 0)], -1)


def recall_at_10(approx_top: Callable, exact_top: Callable, embeddings: np.ndarray,
                 seed: int = 0, queries: int = RECALL_QUERIES) -> float:
  """Mean fraction of the exact 10 nearest rows (query row excluded) that the approximate
  search returns.

  approx_top and exact_top(windows [Q, D], k) -> rows [Q, k] index into `embeddings`."""
  n = embeddings.shape[0]
  if n < 12:
    return 1.0
  pick = np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)
  q = embeddings[pick]
  exact, approx = exact_top(q, 11), approx_top(q, 11)
  hits = 0
  for i, row in enumerate(pick):
    truth = [r for r in exact[i] if r != row][:10]
    found = {r for r in approx[i] if r != row}
    hits += len(found.intersection(truth))
  return hits / (10 * len(pick))
