"""Build and update a search index from a folder of audio with an exported model.

Every audio file under the folder is cut into model windows exactly as the model's training
data was (same FrontendSpec, loudness and noise settings; silence is never trimmed, so the
offsets are times in the file), embedded, L2-normalised and stored with its window offsets.
Rerunning on the folder embeds only files that are new or whose size or mtime changed, and
drops files that no longer exist. Files that cannot be decoded are reported and skipped
(strict=True stops at the first).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np

from jaxaudio import exported
from jaxaudio.data import featurize
from jaxaudio.data.prepare import Featurizer, auto_workers
from jaxaudio.embedder import audio_files
from jaxaudio.errors import SearchIndexError
from jaxaudio.search import ann, store
from jaxaudio.search.exact import ExactIndex

log = logging.getLogger("jaxaudio")

EMBED_CHUNK = 512   # windows gathered across files before a forward pass


def search_settings(meta: dict[str, Any], hop: float | None = None) -> featurize.Settings:
  """The model's training-data settings, minus silence trimming (offsets stay file times),
  with the window hop `hop` (a fraction of a window) when given."""
  settings = dataclasses.replace(featurize.Settings(**meta.get("settings", {})), trim_db=0.0)
  return settings if hop is None else dataclasses.replace(settings, window_hop=float(hop))


def normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _identity(model: exported.ExportedModel, hop: float | None) -> dict[str, Any]:
  return store.model_identity(
      {**model.meta, "settings": dataclasses.asdict(search_settings(model.meta, hop))})


def _check_same_model(path: str, have: dict[str, Any], want: dict[str, Any]) -> None:
  if have == want:
    return
  what = [k for k in want if have.get(k) != want[k]]
  raise SearchIndexError(
      f"{path} was built with another {' and '.join(what)} ({have.get('model')} weights "
      f"{str(have.get('weights_sha256'))[:12]}) than this model ({want['model']} weights "
      f"{want['weights_sha256'][:12]}); index into a new --index path, or pass --rebuild to "
      "re-embed every file with this model.")


def _stat(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return int(st.st_size), int(st.st_mtime_ns)


class _Embedder:
  """Collects windows across files and embeds them in large chunks."""

  def __init__(self, model: exported.ExportedModel, batch_size: int):
    self.model, self.batch_size = model, batch_size
    self.pending: list[tuple[str, int, int, np.ndarray, np.ndarray, float]] = []
    self.pending_windows = 0
    self.done: list[tuple[str, int, int, np.ndarray, np.ndarray, float]] = []

  def add(self, path, size, mtime_ns, windows, offsets, seconds):
    self.pending.append((path, size, mtime_ns, windows, offsets, seconds))
    self.pending_windows += len(windows)
    if self.pending_windows >= EMBED_CHUNK:
      self.flush()

  def flush(self):
    if not self.pending:
      return
    emb = normalise(self.model.embeddings(np.concatenate([p[3] for p in self.pending]),
                                          self.batch_size))
    pos = 0
    for path, size, mtime, windows, offsets, seconds in self.pending:
      self.done.append((path, size, mtime, emb[pos:pos + len(windows)], offsets, seconds))
      pos += len(windows)
    self.pending, self.pending_windows = [], 0


def update(index_path: str, audio: str, export_dir: str, rebuild: bool = False,
           strict: bool = False, with_ann: bool | None = None, workers: int = 0,
           batch_size: int = 64, progress: bool = True, hop: float | None = None
           ) -> dict[str, Any]:
  """Bring the index at `index_path` up to date with the audio under `audio`.

  with_ann: True builds the approximate index, False removes it, None keeps what the index
  had. hop: window hop as a fraction of a window (smaller = finer offsets, more rows); None
  keeps the index's, or for a new index the model's training hop. Returns a summary (files
  added, updated, removed, skipped, rows, timings)."""
  t0 = time.perf_counter()
  if not os.path.exists(audio):
    raise SearchIndexError(f"{audio}: no such file or folder; pass --audio=FOLDER with the "
                           "audio to index.")
  index_path = os.path.abspath(index_path)
  if (os.path.exists(index_path) and not os.path.isfile(os.path.join(index_path, store.MANIFEST))
      and set(os.listdir(index_path)) - {store.LOCK}):
    raise SearchIndexError(f"{index_path} exists, is not empty and is not a search index; "
                           "pass a new or empty folder as --index.")
  os.makedirs(index_path, exist_ok=True)
  with store.writer_lock(index_path):
    return _update(index_path, audio, export_dir, rebuild, strict, with_ann, workers,
                   batch_size, progress, t0, hop)


def _update(index_path, audio, export_dir, rebuild, strict, with_ann, workers, batch_size,
            progress, t0, hop) -> dict[str, Any]:
  model = exported.load(export_dir)
  exists = os.path.isfile(os.path.join(index_path, store.MANIFEST))
  old = store.read_manifest(index_path) if exists else None
  if hop is None and old is not None and not rebuild:
    hop = old.model.get("settings", {}).get("window_hop")
  if hop is not None and not 0.0 < hop <= 1.0:
    raise SearchIndexError(f"--hop={hop} is not a fraction of a window in (0, 1]; e.g. 0.25 "
                           "for a window every quarter window.")
  ident = _identity(model, hop)
  if old is not None and not rebuild:
    _check_same_model(index_path, old.model, ident)
  generation = (old.generation if old else 0) + 1
  previous = {} if old is None or rebuild else {e.path: e for e in old.files}

  scanned = {}
  for p in audio_files(audio):
    p = os.path.abspath(p)
    scanned[p] = _stat(p)
  keep, removed = [], 0
  for path, e in previous.items():
    if not os.path.exists(path):
      removed += 1
    elif path not in scanned or scanned[path] == (e.size, e.mtime_ns):
      keep.append(e)
  kept = {e.path for e in keep}
  todo = [p for p in sorted(scanned) if p not in kept]
  updated = sum(p in previous for p in todo)

  settings = search_settings(model.meta, hop)
  embedder = _Embedder(model, batch_size)
  skipped = []
  featurizer = Featurizer(workers or auto_workers()) if todo else None
  try:
    tasks = ((i, p, None, 0) for i, p in enumerate(todo))
    results = featurizer.map(tasks, model.meta["frontend"], settings, total=len(todo),
                             desc="index" if progress else None) if todo else ()
    for res in results:
      path = todo[res.index]
      if res.error:
        if strict:
          raise SearchIndexError(f"{res.error} (strict mode stops at the first bad file; "
                                 "without --strict such files are reported and skipped)")
        skipped.append({"path": path, "reason": res.error})
        continue
      embedder.add(path, *scanned[path], res.windows, res.offsets, res.seconds)
    embedder.flush()
  finally:
    if featurizer is not None:
      featurizer.close()
  t_embed = time.perf_counter() - t0

  segments = {} if old is None or rebuild else dict(old.segments)
  entries = list(keep)
  new_rows = None   # (segment, embeddings) of this update's rows
  if embedder.done:
    name = store.segment_name(generation)
    new_rows = (name, np.concatenate([d[3] for d in embedder.done]))
    store.write_segment(index_path, name, new_rows[1],
                        np.concatenate([d[4] for d in embedder.done]))
    segments[name] = len(new_rows[1])
    start = 0
    for path, size, mtime, emb, offsets, seconds in embedder.done:
      entries.append(store.Entry(path, size, mtime, name, start, len(emb), float(seconds)))
      start += len(emb)
  referenced = {e.segment for e in entries}
  manifest = store.Manifest(model=ident, files=sorted(entries, key=lambda e: e.path),
                            segments={s: r for s, r in segments.items() if s in referenced},
                            generation=generation)
  stored = sum(manifest.segments.values())
  rows = None   # the live rows, once loaded (compaction and the ANN upkeep both need them)
  if stored - manifest.live_rows > store.COMPACT_DEAD_FRACTION * stored:
    manifest, rows = _compact(index_path, manifest)
  if not exists or rebuild or not os.path.isdir(os.path.join(index_path, "model")):
    store.install_model(index_path, export_dir)
  unchanged = old is not None and not rebuild and not todo and not removed
  manifest.ann = _ann_upkeep(index_path, None if rebuild else old, manifest, rows, new_rows,
                             with_ann, unchanged)
  ann_recall = manifest.ann["recall_at_10"] if manifest.ann else None
  store.write_manifest(index_path, manifest)
  store.remove_unreferenced(index_path, manifest)
  return {"index": index_path, "files": len(manifest.files), "rows": manifest.live_rows,
          "added": len(todo) - updated - len(skipped), "updated": updated, "removed": removed,
          "unchanged": len(keep), "skipped": skipped, "embed_seconds": t_embed,
          "files_per_second": len(todo) / t_embed if todo else 0.0,
          "ann_recall_at_10": ann_recall, "seconds": time.perf_counter() - t0}


def _ann_upkeep(index_path: str, old: store.Manifest | None, manifest: store.Manifest,
                rows: store.Rows | None, new_rows: tuple[str, np.ndarray] | None,
                with_ann: bool | None, unchanged: bool) -> dict[str, Any] | None:
  """The manifest's approximate-index entry after this update (None: no graph).

  with_ann None keeps a graph if the index had one. An intact graph is extended with the
  update's new rows when it still holds every other live row and at most a quarter of it is
  dead; otherwise (first build, compaction, damaged or missing file) it is built over the
  live rows. Recall against exact search is measured again after any change."""
  prev = old.ann if old is not None else None
  if with_ann is False or not (with_ann or prev):
    return None
  t = time.perf_counter()
  file = os.path.join(index_path, prev["file"]) if prev else ""
  intact = bool(prev) and os.path.isfile(file) and os.path.getsize(file) == prev.get("bytes")
  if unchanged and intact:
    return prev
  graph = None
  if intact:
    spans = prev["spans"] + ([[new_rows[0], 0, len(new_rows[1])]] if new_rows else [])
    to_live = ann.live_ids(spans, manifest)
    if (np.sum(to_live >= 0) == manifest.live_rows   # not compacted, and not too many dead
        and len(to_live) - manifest.live_rows <= store.COMPACT_DEAD_FRACTION * len(to_live)):
      try:
        graph = ann.load(file)
      except SearchIndexError as err:
        log.warning("%s; building a new approximate index", err)
      if graph is not None and graph.ntotal != prev["graph_rows"]:
        log.warning("%s holds %d rows, its manifest %d; building a new approximate index",
                    file, graph.ntotal, prev["graph_rows"])
        graph = None
  elif prev:
    log.warning("%s is missing or not the file the manifest names; building a new approximate "
                "index", file)
  if rows is None:
    rows = store.load_rows(index_path, manifest)
  if graph is not None:
    how = "extended" if new_rows else "kept"
    if new_rows:
      ann.add(graph, new_rows[1])
  else:
    how, (spans, to_live) = "built", ann.layout(manifest.files)
    same = np.array_equal(to_live, np.arange(len(to_live)))   # no copy of the rows then
    graph = ann.build(rows.embeddings if same else rows.embeddings[to_live])
  name = prev["file"] if how == "kept" else f"ann-{manifest.generation:06d}.faiss"
  if how != "kept":
    ann.save(graph, os.path.join(index_path, name))
  searchable = ann.Graph(graph, to_live, name)
  recall = ann.recall_at_10(lambda q, k: searchable.search(q, k)[1], _exact_rows(rows),
                            rows.embeddings)
  return {"file": name, "bytes": os.path.getsize(os.path.join(index_path, name)),
          "kind": f"faiss HNSW M={ann.M}", "rows": manifest.live_rows,
          "graph_rows": len(to_live), "dead_rows": searchable.dead, "spans": spans,
          "recall_at_10": recall, "ef_search": ann.EF_SEARCH, "last_update": how,
          "seconds": time.perf_counter() - t}


def _exact_rows(rows: store.Rows):
  exact = ExactIndex(rows.embeddings, rows.file_of_row, len(rows.files))
  return lambda q, k: exact.search([w[None] for w in q], k, per_file=False)[1]


def _compact(path: str, manifest: store.Manifest) -> tuple[store.Manifest, store.Rows]:
  """All live rows into one new segment, files in manifest order; returns the new manifest
  and the rows."""
  rows = store.load_rows(path, manifest)
  name = store.segment_name(manifest.generation) + "c"
  store.write_segment(path, name, rows.embeddings, rows.offsets)
  start, files = 0, []
  for e in manifest.files:
    files.append(dataclasses.replace(e, segment=name, start=start))
    start += e.count
  return (dataclasses.replace(manifest, files=files,
                              segments={name: rows.embeddings.shape[0]}), rows)
