"""Optional approximate search for collections that outgrow exact search: FAISS HNSW, or
IVF-PQ for 100M+ windows.

`pip install 'jaxaudio[ann]'` brings faiss-cpu. Two methods (`search index --ann=hnsw|ivfpq`):
HNSW, a graph over the float32 rows (inner product = cosine on the L2-normalised rows; 2 KB
and more a 512-d window in RAM), and IVF-PQ (inverted lists of 4-bit product-quantisation
codes, dim/8 bytes a window, trained on a sample of the rows, whose best candidates are
re-scored exactly from the segments on disk; see the IVF-PQ section below).

Either index is kept up to date incrementally, like the segments: an update appends the new
rows (IVF-PQ encodes them with the codebooks it was trained with), rows of deleted or
changed files stay in it as dead ids that searches skip (a FAISS IDSelector, so k live rows
still come back), and it is rebuilt over the live rows only when more than a quarter of it
is dead, the segments were compacted, the method changed or (IVF-PQ) the rows grew
RETRAIN_GROWTH times past those it was trained for. The manifest records which segment rows
the ids are (`spans`: [segment, start, count] in id order). Its window-level recall@10
against exact search is measured after every change, on index rows as queries with the row
itself left out (IVF-PQ: rows held out of its training sample), and stored in the manifest
so the user sees what the speed costs; an IVF-PQ build also stores the smallest nprobe that
reaches TARGET_RECALL, the default for its queries (upkeep).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable

import numpy as np

from jaxaudio.runtime.errors import SearchIndexError
from jaxaudio.search import store
from jaxaudio.search.exact import ExactIndex

log = logging.getLogger("jaxaudio")

METHODS = ("hnsw", "ivfpq")
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


# --- IVF-PQ: an index for 100M+ windows -------------------------------------------------
#
# Chosen by bench/bench_ivfpq.py on bench_search's clustered rows (512-d): an inverted file
# of NLIST lists (a flat coarse quantiser up to HNSW_COARSE_LISTS lists, an HNSW graph over
# the list centroids from there on, where assigning rows to 16k+ centroids one by one would
# dominate the build), each row stored as a 4-bit product-quantisation code of dim/4
# sub-quantisers (FAISS's fast-scan layout): dim/8 bytes, 64 B at 512-d instead of 2 KB.
# Codes alone rank the rows of one sound kind poorly (their cosines to a query differ by
# ~0.01), so each query window's REFINE best codes are re-scored exactly from the segments'
# float32 rows, memory-mapped: RAM holds the codes, the disk the rows.
PQ_DIMS = 4                 # dimensions per sub-quantiser (4-bit codes: dim / 8 bytes a row)
PQ_BITS = 4
HNSW_COARSE_LISTS = 16384   # from this many lists on, an HNSW graph finds a row's lists
MAX_LISTS = 65536
ROWS_PER_LIST = 39          # FAISS k-means wants at least 39 training rows per centroid
TRAIN_ROWS_PER_LIST = 64
MAX_TRAIN_ROWS = 262144
MIN_IVFPQ_ROWS = 1000
REFINE = 1024               # codes re-scored exactly per query window, at the least
MAX_REFINE = 16384          # ... and at the most (each costs a random read of its float row)
TARGET_RECALL = 0.95        # the build picks the smallest nprobe (then refine) reaching it
PLATEAU = 0.005             # recall gained by doubling nprobe below this: refine is the limit
MAX_NPROBE = 1024
RETRAIN_GROWTH = 4.0        # rows grown this much past the training: train again
ADD_CHUNK = 262144          # rows read from the segments and added at once


def nlist_for(rows: int) -> int:
  """Lists for `rows` rows: the power of two at most 2 sqrt(rows) (FAISS's guide says 4 to
  16 sqrt(N); fewer, longer lists cost a little scanning and build much faster here) and at
  most rows / ROWS_PER_LIST, so k-means has its 39 rows a centroid."""
  cap = max(1, min(2 * math.sqrt(rows), rows / ROWS_PER_LIST, MAX_LISTS))
  return 1 << int(math.floor(math.log2(cap)))


def pq_subquantisers(dim: int) -> int:
  """dim / PQ_DIMS, or the largest divisor of dim below it when PQ_DIMS does not divide dim."""
  m = max(1, dim // PQ_DIMS)
  while dim % m:
    m -= 1
  return m


def factory_for(rows: int, dim: int) -> str:
  nlist = nlist_for(rows)
  coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_COARSE_LISTS else f"IVF{nlist}"
  return f"{coarse},PQ{pq_subquantisers(dim)}x{PQ_BITS}fs"


def check_ivfpq_rows(rows: int) -> None:
  if rows < MIN_IVFPQ_ROWS:
    raise SearchIndexError(f"{rows} windows are too few to train an IVF-PQ index (it learns "
                           f"its lists and codebooks from at least {MIN_IVFPQ_ROWS}); index "
                           "more audio first, or use --ann=hnsw or exact search for a "
                           "collection this small.")


class SpanRows:
  """Float32 rows by ANN id, read from the segments an index's spans name (memory-mapped,
  so only the rows asked for are read). Ids of spans whose segment is gone must not be
  asked for (live_ids marks them dead)."""

  def __init__(self, path: str, spans: list[list], segments: dict[str, int], dim: int):
    self.spans, self.dim = spans, dim
    self.starts = np.cumsum([0] + [c for _, _, c in spans])
    self.arrays = {s: store.load_segment(path, s, segments[s], dim)[0]
                   for s in {sp[0] for sp in spans} if s in segments}

  @property
  def total(self) -> int:
    return int(self.starts[-1])

  def read(self, ids: np.ndarray) -> np.ndarray:
    """Rows [len(ids), dim] of sorted ids."""
    out = np.empty((len(ids), self.dim), np.float32)
    which = np.searchsorted(self.starts, ids, side="right") - 1
    for j in np.unique(which):
      m = which == j
      seg, start, _ = self.spans[j]
      out[m] = self.arrays[seg][start + ids[m] - self.starts[j]]
    return out

  def chunks(self, first: int = 0, size: int = ADD_CHUNK):
    """Rows first.. in order, `size` at a time."""
    for s in range(first, self.total, size):
      yield self.read(np.arange(s, min(s + size, self.total)))


def build_ivfpq(reader: SpanRows, to_live: np.ndarray, threads: int = 0, seed: int = 0
                ) -> tuple[Any, np.ndarray]:
  """An IVF-PQ index over every row of `reader` (ids in its order), trained on a sample of
  the live rows; returns it and the sample's ids (held out of the recall queries)."""
  faiss = _faiss()
  if threads:
    faiss.omp_set_num_threads(threads)
  live = np.flatnonzero(to_live >= 0)
  check_ivfpq_rows(len(live))
  nlist = nlist_for(len(live))
  spare = min(RECALL_QUERIES, len(live) // 4)     # rows kept out of training for recall
  size = min(TRAIN_ROWS_PER_LIST * nlist, MAX_TRAIN_ROWS, len(live) - spare)
  sample = np.sort(np.random.default_rng(seed).choice(live, size=size, replace=False))
  index = faiss.index_factory(reader.dim, factory_for(len(live), reader.dim), faiss.METRIC_L2)
  index.train(reader.read(sample))
  for rows in reader.chunks():
    index.add(rows)
  return index, sample


class Codes:
  """An IVF-PQ index whose ids map to an index's live rows: the codes propose REFINE rows
  per query window, their float rows (SpanRows) score them exactly; dead ids are skipped."""

  def __init__(self, index: Any, to_live: np.ndarray, reader: SpanRows,
               file: str = "the approximate index", refine: int | None = None):
    self.refine = int(refine or REFINE)
    if index.ntotal != len(to_live) or reader.total != len(to_live):
      raise SearchIndexError(f"{file} holds {index.ntotal} rows, the manifest says "
                             f"{len(to_live)}; {REBUILD}")
    faiss = _faiss()
    self.index, self.to_live, self.reader = index, to_live, reader
    self.ivf = faiss.extract_index_ivf(index)
    self.nlist = self.ivf.nlist
    self.dead = int(np.sum(to_live < 0))
    self._params = faiss.SearchParametersIVF()
    if self.dead:
      self._bitmap = np.packbits(to_live >= 0, bitorder="little")
      self._selector = faiss.IDSelectorBitmap(len(to_live), faiss.swig_ptr(self._bitmap))
      self._params.sel = self._selector
    self._hnsw = isinstance(faiss.downcast_index(self.ivf.quantizer), faiss.IndexHNSW)
    if self._hnsw:
      self._params.quantizer_params = faiss.SearchParametersHNSW()

  def search(self, windows: np.ndarray, k: int, nprobe: int, ef: int = EF_SEARCH
             ) -> tuple[np.ndarray, np.ndarray]:
    """(exact scores [W, k], live rows [W, k]) per query window, best first, ties by row;
    missing neighbours are -1 (score -inf)."""
    windows = np.ascontiguousarray(windows, np.float32)
    self._params.nprobe = min(nprobe, self.nlist)
    if self._hnsw:   # the coarse graph must offer at least nprobe lists
      self._params.quantizer_params.efSearch = max(ef, nprobe)
    fetch = min(max(self.refine, k), len(self.to_live))
    _, ids = self.index.search(windows, fetch, params=self._params)
    found = ids >= 0
    uniq = np.unique(ids[found])
    scores = np.full(ids.shape, -np.inf, np.float32)
    if len(uniq):
      exact = windows @ self.reader.read(uniq).T                     # [W, unique]
      col = np.searchsorted(uniq, np.maximum(ids, 0))
      scores = np.where(found, np.take_along_axis(exact, col, axis=1), -np.inf)
    rows = np.where(found, self.to_live[np.maximum(ids, 0)], -1)
    order = np.lexsort((np.where(found, rows, np.iinfo(np.int64).max), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def recall_at_10(approx_top: Callable, exact_top: Callable, embeddings: np.ndarray,
                 seed: int = 0, queries: int = RECALL_QUERIES) -> float:
  """Mean fraction of the exact 10 nearest rows (query row excluded) that the approximate
  search returns, over `queries` random rows.

  approx_top and exact_top(windows [Q, D], k) -> rows [Q, k] index into `embeddings`."""
  n = embeddings.shape[0]
  if n < 12:
    return 1.0
  pick = np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)
  q = embeddings[pick]
  return recall_of(approx_top(q, 11), exact_top(q, 11), pick)


def recall_of(approx: np.ndarray, exact: np.ndarray, pick: np.ndarray) -> float:
  """recall@10 of approximate rows [Q, >=11] against exact rows [Q, 11] for query rows
  `pick` (each left out of both lists)."""
  hits = 0
  for i, row in enumerate(pick):
    truth = [r for r in exact[i] if r != row][:10]
    found = {r for r in approx[i] if r != row}
    hits += len(found.intersection(truth))
  return hits / (10 * len(pick)) if len(pick) else 1.0


def exact_top_streamed(reader: SpanRows, to_live: np.ndarray, queries: np.ndarray, k: int
                       ) -> np.ndarray:
  """Live rows [Q, k] of the k best cosines to each query over every live row of `reader`,
  ties by row: exact search by one pass over the segments, ADD_CHUNK rows at a time, so
  measuring recall needs no copy of the rows in memory."""
  q = np.ascontiguousarray(queries, np.float32)
  best_s = np.full((len(q), 0), -np.inf, np.float32)
  best_r = np.zeros((len(q), 0), np.int64)
  for first in range(0, reader.total, ADD_CHUNK):
    ids = np.arange(first, min(first + ADD_CHUNK, reader.total))
    ids = ids[to_live[ids] >= 0]          # dead rows' segments may be gone
    if not len(ids):
      continue
    s = np.concatenate([best_s, q @ reader.read(ids).T], axis=1)
    r = np.concatenate([best_r, np.broadcast_to(to_live[ids], (len(q), len(ids)))], axis=1)
    order = np.lexsort((r, -s), axis=-1)[:, :k]
    best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
  return best_r


def method_of(entry: dict[str, Any] | None) -> str | None:
  """The method of a manifest's approximate-index entry (older manifests: HNSW)."""
  return None if not entry else entry.get("method", "hnsw")


def _exact_rows(rows: store.Rows) -> Callable:
  exact = ExactIndex(rows.embeddings, rows.file_of_row, len(rows.files))
  return lambda q, k: exact.search([w[None] for w in q], k, per_file=False)[1]


def upkeep(index_path: str, prev: dict[str, Any] | None, manifest: store.Manifest,
           rows: store.Rows | None, compacted: bool, with_ann: bool | str | None,
           unchanged: bool) -> dict[str, Any] | None:
  """The manifest's approximate-index entry after an update (None: no approximate index).

  with_ann: None keeps the index the update found, False drops it, True builds or keeps one
  (the method it had, else HNSW), "hnsw" / "ivfpq" that method. An intact index of the same
  method is extended with the rows of every segment it does not cover yet (this run's
  commits and a killed run's) when it then holds every live row, at most a quarter of it is
  dead and (IVF-PQ) the live rows are at most RETRAIN_GROWTH times those it was trained
  for; otherwise (first build, compaction, another method, damaged or missing file) it is
  built over the live rows. Recall against exact search is measured again after any change.
  `rows`: the live rows when the caller holds them (HNSW needs them; IVF-PQ reads the
  segments, memory-mapped)."""
  if with_ann is False or not (with_ann or prev):
    return None
  method = with_ann if isinstance(with_ann, str) else (method_of(prev) or "hnsw")
  if method not in METHODS:
    raise SearchIndexError(f"--ann={method} is not an approximate index method; pass "
                           f"--ann={' or --ann='.join(METHODS)}.")
  t = time.perf_counter()
  file = os.path.join(index_path, prev["file"]) if prev else ""
  intact = bool(prev) and os.path.isfile(file) and os.path.getsize(file) == prev.get("bytes")
  if unchanged and intact and method_of(prev) == method:
    return prev
  index, added = None, []
  if intact and not compacted and method_of(prev) == method:
    covered = {span[0] for span in prev["spans"]}
    added = [s for s in sorted(manifest.segments) if s not in covered]
    spans = prev["spans"] + [[s, 0, manifest.segments[s]] for s in added]
    to_live = live_ids(spans, manifest)
    grown = (method == "ivfpq"
             and manifest.live_rows > RETRAIN_GROWTH * prev.get("trained_for_rows", 0))
    if (np.sum(to_live >= 0) == manifest.live_rows   # not compacted, and not too many dead
        and len(to_live) - manifest.live_rows <= store.COMPACT_DEAD_FRACTION * len(to_live)
        and not grown):
      try:
        index = load(file)
      except SearchIndexError as err:
        log.warning("%s; building a new approximate index", err)
      if index is not None and index.ntotal != prev["graph_rows"]:
        log.warning("%s holds %d rows, its manifest %d; building a new approximate index",
                    file, index.ntotal, prev["graph_rows"])
        index = None
  elif prev and not intact:
    log.warning("%s is missing or not the file the manifest names; building a new approximate "
                "index", file)
  dim = int(manifest.model["embedding_dim"])
  if index is not None:
    how = "extended" if added else "kept"
    first_new = prev["graph_rows"]
    if method == "ivfpq":
      reader = SpanRows(index_path, spans, manifest.segments, dim)
      for chunk in reader.chunks(first_new):
        index.add(chunk)
    else:
      for s in added:
        add(index, store.load_segment(index_path, s, manifest.segments[s], dim)[0])
    trained_for = prev.get("trained_for_rows")
    held_out = np.arange(first_new, len(to_live))       # rows the codebooks never saw
  else:
    how, (spans, to_live) = "built", layout(manifest.files)
    if method == "ivfpq":
      reader = SpanRows(index_path, spans, manifest.segments, dim)
      index, sample = build_ivfpq(reader, to_live)
      trained_for = manifest.live_rows
      held_out = np.setdiff1d(np.arange(len(to_live)), sample)
    else:
      rows = rows if rows is not None else store.load_rows(index_path, manifest)
      same = np.array_equal(to_live, np.arange(len(to_live)))   # no copy of the rows then
      index = build(rows.embeddings if same else rows.embeddings[to_live])
  name = prev["file"] if how == "kept" else f"ann-{manifest.generation:06d}.faiss"
  if how != "kept":
    save(index, os.path.join(index_path, name))
  entry = {"file": name, "bytes": os.path.getsize(os.path.join(index_path, name)),
           "method": method, "rows": manifest.live_rows, "graph_rows": len(to_live),
           "spans": spans, "last_update": how}
  if method == "ivfpq":
    codes = Codes(index, to_live, reader, name)
    entry.update(_ivfpq_recall(codes, reader, to_live, held_out))
    entry.update({"kind": f"faiss {factory_of(index)}, {codes.refine} re-scored exactly",
                  "lists": codes.nlist, "code_bytes": code_bytes(index),
                  "refine": codes.refine, "trained_for_rows": trained_for, "dead_rows": codes.dead})
  else:
    rows = rows if rows is not None else store.load_rows(index_path, manifest)
    searchable = Graph(index, to_live, name)
    entry.update({"kind": f"faiss HNSW M={M}", "dead_rows": searchable.dead,
                  "ef_search": EF_SEARCH,
                  "recall_at_10": recall_at_10(lambda q, k: searchable.search(q, k)[1],
                                               _exact_rows(rows), rows.embeddings)})
  entry["seconds"] = time.perf_counter() - t
  return entry


def factory_of(index: Any) -> str:
  """The index_factory string of an IVF-PQ fast-scan index, from the index itself."""
  faiss = _faiss()
  ivf = faiss.extract_index_ivf(index)
  coarse = "_HNSW32" if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW) else ""
  pq = faiss.downcast_index(index).pq
  return f"IVF{ivf.nlist}{coarse},PQ{pq.M}x{pq.nbits}fs"


def code_bytes(index: Any) -> int:
  return int(_faiss().downcast_index(index).pq.code_size)


def _ivfpq_recall(codes: Codes, reader: SpanRows, to_live: np.ndarray, held_out: np.ndarray,
                  seed: int = 0) -> dict[str, Any]:
  """recall@10 against exact search on up to RECALL_QUERIES live rows held out of training,
  at nprobe 1, 2, 4, ... until TARGET_RECALL. When doubling nprobe gains less than PLATEAU,
  the re-scored candidates are what limits recall (the true neighbours sit in the lists
  scanned but their codes rank below REFINE others: dense neighbourhoods, thousands of rows
  a sound kind), so from there the candidates double instead (up to MAX_REFINE), and back to
  nprobe when that stops paying, until the target or both limits. The first step reaching
  the target (else the best) gives the index's nprobe and refine (codes.refine is set)."""
  live = held_out[to_live[held_out] >= 0]
  if len(live) < RECALL_QUERIES:   # an extension by few rows: top up with other live rows
    others = np.setdiff1d(np.flatnonzero(to_live >= 0), live)
    rng = np.random.default_rng(seed)
    live = np.concatenate([live, rng.choice(others, size=min(len(others),
                                                             RECALL_QUERIES - len(live)),
                                            replace=False)])
  ids = np.sort(np.random.default_rng(seed).choice(live, size=min(RECALL_QUERIES, len(live)),
                                                   replace=False))
  if len(ids) == 0:
    return {"recall_at_10": 1.0, "nprobe": 1, "recall_by_nprobe": {}, "recall_queries": 0}
  queries, pick = reader.read(ids), to_live[ids]
  exact = exact_top_streamed(reader, to_live, queries, 11)
  recall = lambda nprobe: recall_of(codes.search(queries, 11, nprobe)[1], exact, pick)  # noqa: E731
  base, top, cap = codes.refine, min(codes.nlist, MAX_NPROBE), min(MAX_REFINE, len(to_live))
  ladder: list[list] = []        # [nprobe, refine, recall] in the order measured
  nprobe, moving, last = 1, "nprobe", -1.0
  while True:
    got = recall(nprobe)
    ladder.append([nprobe, codes.refine, got])
    more = {"nprobe": nprobe < top, "refine": codes.refine < cap}
    if got >= TARGET_RECALL or not any(more.values()):
      break
    other = "refine" if moving == "nprobe" else "nprobe"
    if (got - last < PLATEAU or not more[moving]) and more[other]:
      moving = other             # this knob stopped paying: the other one is the limit
    last = got
    if moving == "nprobe":
      nprobe = min(2 * nprobe, top)
    else:
      codes.refine = min(2 * codes.refine, cap)
  chosen = next((s for s in ladder if s[2] >= TARGET_RECALL),
                max(ladder, key=lambda s: (s[2], -s[0] * s[1])))
  codes.refine = chosen[1]
  return {"recall_at_10": chosen[2], "nprobe": chosen[0],
          "recall_by_nprobe": {str(n): r for n, f, r in ladder if f == base},
          "recall_ladder": ladder, "recall_queries": len(ids),
          "target_recall": TARGET_RECALL}