"""Query-by-example over a search index: audio in, ranked (file, offset, score) out.

A Searcher loads the index once (rows on the device for exact search, or the FAISS HNSW
graph or IVF-PQ codes) and the model stored in it, then answers any number of queries; the
CLI is one query run. A sharded index (jaxaudio.search.shards) opens one Searcher per shard
with one model and merges their top k: the server, which builds a Searcher from the index
path, serves shards as it serves one index.
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
from jaxaudio.search import ann, shards, store
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


def _merge_key(hit: Hit, per_file: bool) -> tuple:
  """Rank of a hit among the shards' hits as one index over their union ranks it: by score,
  ties by file path (that index's file order), then by offset (its row order in a file)."""
  return (-hit.score, hit.file) if per_file else (-hit.score, hit.file, hit.offset)


class Searcher:
  """An opened index. use_ann=True searches the approximate index built with `index --ann`
  (HNSW: `ef`, the search breadth; IVF-PQ: `nprobe`, the lists scanned, default the
  smallest that reached the target recall at build, and `ef` for an HNSW coarse quantiser)."""

  def __init__(self, index_path: str, use_ann: bool = False, ef: int = ann.EF_SEARCH,
               share: Searcher | None = None, nprobe: int | None = None,
               model: exported.ExportedModel | None = None):
    """`share`: an exact Searcher of the same index whose manifest, model and rows this one
    reuses instead of reading them again (a server holds both kinds). `model`: the model
    already loaded for another shard of the same sharded index."""
    self.path = os.path.abspath(index_path)
    if ef <= 0:
      raise SearchIndexError(f"--ef={ef} is not a search breadth; pass a positive number "
                             f"(default {ann.EF_SEARCH}).")
    if nprobe is not None and nprobe <= 0:
      raise SearchIndexError(f"--nprobe={nprobe} is not a number of IVF lists to scan; pass a "
                             "positive number, or leave it out for the one the index measured "
                             "at build.")
    self.ef, self.nprobe = ef, nprobe
    self._graph = None
    self._exact = None
    self._shards: list[Searcher] | None = None
    paths = shards.shard_paths(self.path)
    if paths is not None:
      self._open_shards(paths, use_ann, share)
      return
    if share is not None:
      self.manifest, self.model, self.rows = share.manifest, share.model, share.rows
    else:
      self.manifest = store.read_manifest(self.path)
      self.model = model if model is not None else _load_model(self.path, self.manifest)
      if model is not None and model.meta["weights_sha256"] != self.manifest.model[
          "weights_sha256"]:
        raise SearchIndexError(f"{self.path}: this shard was built with another model than the "
                               "first shard; index every shard with the same model.")
      self.rows = store.load_rows(self.path, self.manifest, embeddings=not use_ann)
    self._describe()
    if use_ann:
      self._open_ann()
    else:
      self._exact = ExactIndex(self.rows.embeddings, self.rows.file_of_row,
                               len(self.rows.files))

  def _describe(self) -> None:
    self.spec_dict = self.manifest.model["frontend"]
    self.settings = search_settings(self.manifest.model)
    self.window_seconds = (self.spec_dict["frames_per_window"] * self.spec_dict["hop_length"]
                           / self.spec_dict["sample_rate"])

  def _open_ann(self) -> None:
    if not self.manifest.ann:
      raise SearchIndexError(f"{self.path} has no approximate index; build it with python -m "
                             "jaxaudio.search index --ann, or search without --ann.")
    file = os.path.join(self.path, self.manifest.ann["file"])
    if "spans" not in self.manifest.ann:
      raise SearchIndexError(f"{file} has no row layout in the manifest (an older jaxaudio "
                             "wrote it); run python -m jaxaudio.search index --ann again to "
                             "rebuild it.")
    spans = self.manifest.ann["spans"]
    to_live = ann.live_ids(spans, self.manifest)
    if ann.method_of(self.manifest.ann) == "ivfpq":
      reader = ann.SpanRows(self.path, spans, self.manifest.segments,
                            int(self.manifest.model["embedding_dim"]))
      self._graph = ann.Codes(ann.load(file), to_live, reader, file,
                              refine=self.manifest.ann.get("refine", ann.REFINE))
      if self.nprobe is None:
        self.nprobe = int(self.manifest.ann["nprobe"])
    else:
      self._graph = ann.Graph(ann.load(file), to_live, file)

  def _open_shards(self, paths: list[str], use_ann: bool, share: Searcher | None) -> None:
    """One Searcher per shard (one model), and the union's manifest and rows as this one's
    (files and rows shard after shard), which the server's file table and classifier use."""
    if share is not None:
      self._shards = [Searcher(p, use_ann, self.ef, share=s, nprobe=self.nprobe)
                      for p, s in zip(paths, share._shards)]
    else:
      self._shards = []
      for p in paths:
        model = self._shards[0].model if self._shards else None
        self._shards.append(Searcher(p, use_ann, self.ef, nprobe=self.nprobe, model=model))
    manifests = [s.manifest for s in self._shards]
    shards.check(self.path, manifests, paths)
    self.model = self._shards[0].model
    parts = [s.rows for s in self._shards]
    base = np.cumsum([0] + [len(r.files) for r in parts])[:-1]
    self.rows = store.Rows(
        None if use_ann else np.concatenate([r.embeddings for r in parts]),
        np.concatenate([r.offsets for r in parts]),
        np.concatenate([r.file_of_row + b for r, b in zip(parts, base)]).astype(np.int32),
        [e for r in parts for e in r.files])
    anns = [m.ann for m in manifests]
    union_ann = None
    if all(anns):
      union_ann = {"method": "/".join(sorted({ann.method_of(a) for a in anns})),
                   "shards": len(anns), "rows": sum(a["rows"] for a in anns),
                   "recall_at_10": min(a["recall_at_10"] for a in anns),
                   "recall_at_10_by_shard": [a["recall_at_10"] for a in anns]}
    self.manifest = store.Manifest(
        model=manifests[0].model,
        segments={f"{i}/{name}": n for i, m in enumerate(manifests)
                  for name, n in m.segments.items()},
        files=self.rows.files, generation=sum(m.generation for m in manifests), ann=union_ann)
    self._describe()

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
    """Ranked hits per query ([W_i, D] normalised windows each); over shards, each shard's
    best k merged (_merge_key)."""
    if self._shards is not None:
      every = [s.search(queries, k, per_file) for s in self._shards]
      return [sorted((h for hits in per_query for h in hits),
                     key=lambda h: _merge_key(h, per_file))[:k] for per_query in zip(*every)]
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
    if isinstance(self._graph, ann.Codes):
      scores, rows = self._graph.search(windows, fetch, self.nprobe, self.ef)
    else:
      scores, rows = self._graph.search(windows, fetch, self.ef)
    return [self._hit(row, score)
            for row, score in rank_candidates(scores, rows, self.rows.file_of_row, k, per_file)]

  def info(self) -> dict[str, Any]:
    return {"index": self.path, "files": len(self.rows.files), "rows": self.manifest.live_rows,
            "model": self.manifest.model["model"],
            "weights_sha256": self.manifest.model["weights_sha256"], "ann": self.manifest.ann,
            "shards": None if self._shards is None else [s.path for s in self._shards],
            "nprobe": self.nprobe}
