"""Optional approximate search for collections that outgrow exact search: FAISS HNSW.

`pip install 'jaxaudio[ann]'` brings faiss-cpu. The graph is built over the live rows with
inner product (= cosine on the L2-normalised rows); its window-level recall@10 against exact
search is measured when it is built, on index rows as queries with the row itself left out,
and stored in the manifest so the user sees what the speed costs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxaudio.errors import SearchIndexError

M = 32                 # graph degree: FAISS's recommended range is 16-64
EF_CONSTRUCTION = 128
EF_SEARCH = 128
RECALL_QUERIES = 500


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
  _faiss().write_index(index, file)


def load(file: str, rows: int) -> Any:
  faiss = _faiss()
  try:
    index = faiss.read_index(file)
  except RuntimeError as err:
    raise SearchIndexError(f"{file}: the approximate index is unreadable; rebuild it with "
                           "python -m jaxaudio.search index --ann.") from err
  if index.ntotal != rows:
    raise SearchIndexError(f"{file} holds {index.ntotal} rows, the index {rows}; rebuild it "
                           "with python -m jaxaudio.search index --ann.")
  return index


def search(index: Any, windows: np.ndarray, k: int, ef: int = EF_SEARCH
           ) -> tuple[np.ndarray, np.ndarray]:
  """(scores [W, k], rows [W, k]) per query window; missing neighbours have row -1."""
  index.hnsw.efSearch = max(ef, k)
  return index.search(np.ascontiguousarray(windows, np.float32), k)


def recall_at_10(index: Any, embeddings: np.ndarray, exact_top: callable, seed: int = 0,
                 queries: int = RECALL_QUERIES, ef: int = EF_SEARCH) -> float:
  """Mean fraction of the exact 10 nearest rows (query row excluded) that HNSW returns.

  exact_top(windows [Q, D], k) -> rows [Q, k] is the exact search to compare against."""
  n = embeddings.shape[0]
  if n < 12:
    return 1.0
  pick = np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)
  q = embeddings[pick]
  exact = exact_top(q, 11)
  _, approx = search(index, q, 11, ef)
  hits = 0
  for i, row in enumerate(pick):
    truth = [r for r in exact[i] if r != row][:10]
    found = {r for r in approx[i] if r != row}
    hits += len(found.intersection(truth))
  return hits / (10 * len(pick))
