"""Build and update a search index from a folder of audio with an exported model.

Every audio file under the folder is cut into model windows exactly as the model's training
data was (same FrontendSpec, loudness and noise settings; silence is never trimmed, so the
offsets are times in the file), embedded, L2-normalised and stored with its window offsets.
Rerunning on the folder embeds only files that are new or whose size or mtime changed, and
drops files that no longer exist. Files that cannot be decoded are reported and skipped
(strict=True stops at the first).

An update commits as it goes: every COMMIT_FILES embedded files or COMMIT_SECONDS, whichever
comes first, a new segment with the rows embedded since the last commit and a manifest that
names them are swapped in (jaxaudio.search.store), so a killed run loses at most one commit
interval and rerunning the same command embeds only what was not committed. A changed file
keeps its old rows until the commit that adds its new ones, so no path ever has two live
entries. Compaction and the approximate index wait for the final commit; the intermediate
manifests record what the run set out to do (store.Manifest.unfinished), so the rerun
finishes it (a `--rebuild` rerun continues its own unfinished rebuild instead of starting
over: the rows it committed came from the same model).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from jaxaudio.inference import exported
from jaxaudio.models.outputs import l2_normalise
from jaxaudio.audio.io import AUDIO_EXTENSIONS, DEFAULT_MAX_SECONDS
from jaxaudio.audio import featurize
from jaxaudio.audio.featurize import Featurizer, auto_workers
from jaxaudio.audio.io import audio_files
from jaxaudio.runtime.errors import SearchIndexError
from jaxaudio.runtime.progress import progress as progress_bar
from jaxaudio.search import ann, store

log = logging.getLogger("jaxaudio")

EMBED_CHUNK = 512      # windows gathered across files before a forward pass
COMMIT_FILES = 256     # an update commits after this many embedded files ...
COMMIT_SECONDS = 60.0  # ... or this many seconds, whichever comes first: what a kill can lose


def search_settings(meta: dict[str, Any], hop: float | None = None) -> featurize.Settings:
  """The model's training-data settings, minus silence trimming (offsets stay file times),
  with the window hop `hop` (a fraction of a window) when given."""
  settings = dataclasses.replace(featurize.Settings(**meta.get("settings", {})), trim_db=0.0)
  return settings if hop is None else dataclasses.replace(settings, window_hop=float(hop))


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

  def take(self) -> list[tuple[str, int, int, np.ndarray, np.ndarray, float]]:
    """Every file embedded so far (pending windows included), handed over once."""
    self.flush()
    done, self.done = self.done, []
    return done

  def flush(self):
    if not self.pending:
      return
    emb = l2_normalise(self.model.embeddings(np.concatenate([p[3] for p in self.pending]),
                                          self.batch_size))
    pos = 0
    for path, size, mtime, windows, offsets, seconds in self.pending:
      self.done.append((path, size, mtime, emb[pos:pos + len(windows)], offsets, seconds))
      pos += len(windows)
    self.pending, self.pending_windows = [], 0


def scan(audio: str, strict: bool) -> tuple[dict[str, tuple], list[dict[str, str]]]:
  """{absolute path: (size, mtime)} of the audio files under `audio`, and the entries skipped
  as unreadable (dangling symlinks, pipes: reported, not read); one sentence for a missing
  folder, a folder without audio, or (strict) the first skip."""
  if not os.path.exists(audio):
    raise SearchIndexError(f"{audio}: no such file or folder; pass --audio=FOLDER with the "
                           "audio to index.")
  listed_skipped: list[dict[str, str]] = []
  scanned = {}
  for p in audio_files(audio, listed_skipped):
    p = os.path.abspath(p)
    scanned[p] = _stat(p)
  if strict and listed_skipped:
    raise SearchIndexError(f"{listed_skipped[0]['reason']} (strict mode stops at the first bad "
                           "file; without --strict such files are reported and skipped)")
  if not scanned:
    raise SearchIndexError(f"{audio} holds no audio files ({' '.join(AUDIO_EXTENSIONS)}); pass "
                           "--audio=FOLDER with the audio to index.")
  return scanned, listed_skipped


def index_folder(index_path: str) -> str:
  """The absolute index folder, made if missing; refused in one sentence when it is a file or
  a folder of something else (an unfinished build of ours holds the lock file, made first,
  and only our names)."""
  index_path = os.path.abspath(index_path)
  if os.path.exists(index_path) and not os.path.isdir(index_path):
    raise SearchIndexError(f"{index_path} is a file, not a search index folder; pass a new or "
                           "empty folder as --index.")
  if os.path.isdir(index_path) and not os.path.isfile(os.path.join(index_path, store.MANIFEST)):
    names = os.listdir(index_path)
    foreign = store.foreign_files(index_path) or ([] if store.LOCK in names else sorted(names))
    if foreign:
      raise SearchIndexError(f"{index_path} exists and is not a search index (it holds "
                             f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
                             "); pass a new or empty folder as --index.")
  os.makedirs(index_path, exist_ok=True)
  return index_path


def update(index_path: str, audio: str, export_dir: str, rebuild: bool = False,
           strict: bool = False, with_ann: bool | str | None = None, workers: int = 0,
           batch_size: int = 64, progress: bool = True, hop: float | None = None,
           max_seconds: float | None = DEFAULT_MAX_SECONDS, commit_files: int | None = None,
           commit_seconds: float | None = None) -> dict[str, Any]:
  """Bring the index at `index_path` up to date with the audio under `audio`.

  with_ann: True builds the approximate index (the method it had, else HNSW), "hnsw" or
  "ivfpq" that method (jaxaudio.search.ann), False removes it, None keeps what the index
  had. hop: window hop as a fraction of a window (smaller = finer offsets, more rows); None
  keeps the index's, or for a new index the model's training hop. max_seconds: files
  declaring a longer duration are skipped undecoded. commit_files / commit_seconds: the
  commit interval (None: COMMIT_FILES / COMMIT_SECONDS as they are at the call). Returns a
  summary of this run (files added, updated, removed, unchanged, skipped, rows, timings)."""
  t0 = time.perf_counter()
  scanned, listed_skipped = scan(audio, strict)
  index_path = index_folder(index_path)
  with store.writer_lock(index_path):
    summary = _update(index_path, scanned, export_dir, rebuild, strict, with_ann, workers,
                      batch_size, progress, t0, hop, max_seconds, commit_files or COMMIT_FILES,
                      commit_seconds or COMMIT_SECONDS)
  summary["skipped"] = listed_skipped + summary["skipped"]
  return summary


class _Writer:
  """The index as this update rebuilds it, committed as it goes: `live` maps each path to
  its entry (committed or still the previous index's), `segments` the rows each segment
  stores."""

  def __init__(self, path: str, export_dir: str, ident: dict[str, Any],
               old: store.Manifest | None, fresh: bool, live: dict[str, store.Entry],
               with_ann: bool | str | None):
    self.path, self.export_dir, self.ident, self.live = path, export_dir, ident, live
    self.segments = {} if fresh else dict(old.segments)
    self.generation = old.generation if old else 0
    self.prev_ann = None if fresh else old.ann
    self.with_ann = with_ann
    resumed_fresh = bool(old and old.unfinished and old.unfinished.get("fresh"))
    self.unfinished = {"fresh": fresh or resumed_fresh,
                       "ann": with_ann if isinstance(with_ann, str) else
                       bool(with_ann or (with_ann is None and self.prev_ann))}
    # a rebuild killed between its model install and its first commit left another model
    self.need_model = fresh or store.installed_weights(path) != ident["weights_sha256"]
    self.in_flight: frozenset[str] = frozenset()   # names a running Beam job still writes

  def adopt(self, segment: str, rows: int, files: list[list]) -> None:
    """Take in a segment another process wrote (a Beam shard's), with its files' entries
    [path, size, mtime_ns, start, count, seconds]; the next commit names them."""
    if rows:
      self.segments[segment] = rows
    for path, size, mtime, start, count, seconds in files:
      self.live[path] = store.Entry(path, size, mtime, segment, start, count, float(seconds))

  def commit(self, done, final: bool, unchanged: bool = False) -> store.Manifest:
    """Write `done` (files embedded since the last commit) as a new segment and swap in a
    manifest naming it; the final commit also compacts, upkeeps the approximate index and
    clears `unfinished`."""
    self.generation += 1
    if done:
      name = store.segment_name(self.generation)
      emb = np.concatenate([d[3] for d in done])
      store.write_segment(self.path, name, emb, np.concatenate([d[4] for d in done]))
      self.segments[name] = len(emb)
      start = 0
      for path, size, mtime, rows, _, seconds in done:
        self.live[path] = store.Entry(path, size, mtime, name, start, len(rows), float(seconds))
        start += len(rows)
    files = sorted(self.live.values(), key=lambda e: e.path)
    referenced = {e.segment for e in files}
    self.segments = {s: r for s, r in self.segments.items() if s in referenced}
    manifest = store.Manifest(model=self.ident, files=files, segments=dict(self.segments),
                              generation=self.generation)
    stored = sum(manifest.segments.values())
    rows, compacted = None, False
    if final and stored - manifest.live_rows > store.COMPACT_DEAD_FRACTION * stored:
      manifest, rows = _compact(self.path, manifest)
      compacted = True
    if self.need_model:
      store.install_model(self.path, self.export_dir)
      self.need_model = False
    if final:
      manifest.ann = ann.upkeep(self.path, self.prev_ann, manifest, rows, compacted,
                                self.with_ann, unchanged)
    else:
      manifest.ann = None if self.with_ann is False else self.prev_ann
      manifest.unfinished = self.unfinished
    store.write_manifest(self.path, manifest)
    store.remove_unreferenced(self.path, manifest, frozenset() if final else self.in_flight)
    return manifest


def _update(index_path, scanned, export_dir, rebuild, strict, with_ann, workers, batch_size,
            progress, t0, hop, max_seconds, commit_files, commit_seconds) -> dict[str, Any]:
  model = exported.load(export_dir)
  exists = os.path.isfile(os.path.join(index_path, store.MANIFEST))
  old = store.read_manifest(index_path) if exists else None
  store.remove_unreferenced(index_path, old)   # what a killed run wrote and never committed
  if hop is None and old is not None and not rebuild:
    hop = old.model.get("settings", {}).get("window_hop")
  if hop is not None and not 0.0 < hop <= 1.0:
    raise SearchIndexError(f"--hop={hop} is not a fraction of a window in (0, 1]; e.g. 0.25 "
                           "for a window every quarter window.")
  ident = _identity(model, hop)
  if old is not None and old.unfinished:
    if with_ann is None:
      with_ann = old.unfinished.get("ann") or None
    if rebuild and old.unfinished.get("fresh") and old.model == ident:
      rebuild = False   # the same rebuild, killed before: its committed rows stand
  if old is not None and not rebuild:
    _check_same_model(index_path, old.model, ident)
  previous = {} if old is None or rebuild else {e.path: e for e in old.files}

  live, removed = {}, 0
  for path, e in previous.items():
    if os.path.exists(path):
      live[path] = e     # a changed file keeps its old rows until its new ones are committed
    else:
      removed += 1
  todo = [p for p in sorted(scanned)
          if p not in live or scanned[p] != (live[p].size, live[p].mtime_ns)]
  updated = sum(p in previous for p in todo)
  unchanged = len(previous) - removed - updated

  writer = _Writer(index_path, export_dir, ident, old, old is None or rebuild, live, with_ann)
  settings = search_settings(model.meta, hop)
  embedder = _Embedder(model, batch_size)
  skipped = []
  featurizer = Featurizer(workers or auto_workers()) if todo else None
  bar = progress_bar(len(todo), "index" if progress and todo else None, "file")
  tally = _Tally(sum(scanned[p][0] for p in todo))
  try:
    tasks = ((i, p, None, 0) for i, p in enumerate(todo))
    results = featurizer.map(tasks, model.meta["frontend"], settings, total=len(todo),
                             max_seconds=max_seconds) if todo else ()
    since, last = 0, time.monotonic()
    for res in results:
      path = todo[res.index]
      bar.update(1)
      tally.add(scanned[path][0], res)
      if hasattr(bar, "set_postfix_str"):
        bar.set_postfix_str(tally.rates(), refresh=False)
      if res.error:
        if strict:
          raise SearchIndexError(f"{res.error} (strict mode stops at the first bad file; "
                                 "without --strict such files are reported and skipped)")
        skipped.append({"path": path, "reason": res.error})
        live.pop(path, None)    # a changed file that no longer decodes loses its old rows
        continue
      embedder.add(path, *scanned[path], res.windows, res.offsets, res.seconds)
      since += 1
      if since >= commit_files or time.monotonic() - last >= commit_seconds:
        writer.commit(embedder.take(), final=False)
        if progress:
          bar.write(f"index: committed {tally.files}/{len(todo)} files ({tally.rates()}, "
                    f"{tally.eta()})", file=sys.stderr)
        since, last = 0, time.monotonic()
    done = embedder.take()
  finally:
    bar.close()
    if featurizer is not None:
      featurizer.close()
  t_embed = time.perf_counter() - t0
  nothing_to_do = (old is not None and not old.unfinished and not rebuild and not todo
                   and not removed)
  manifest = writer.commit(done, final=True, unchanged=nothing_to_do)
  ann_recall = manifest.ann["recall_at_10"] if manifest.ann else None
  return {"index": index_path, "files": len(manifest.files), "rows": manifest.live_rows,
          "added": len(todo) - updated - len(skipped), "updated": updated, "removed": removed,
          "unchanged": unchanged, "skipped": skipped, "embed_seconds": t_embed,
          "files_per_second": len(todo) / t_embed if todo else 0.0,
          "ann_recall_at_10": ann_recall, "seconds": time.perf_counter() - t0}


class _Tally:
  """What an update has featurized so far, for the progress display: files, hours of audio,
  windows/s and an ETA from the bytes still to read."""

  def __init__(self, total_bytes: int):
    self.total_bytes, self.bytes, self.files, self.windows, self.seconds = (total_bytes, 0, 0,
                                                                            0, 0.0)
    self.start = time.monotonic()

  def add(self, size: int, res: featurize.Result) -> None:
    self.files += 1
    self.bytes += size
    if not res.error:
      self.windows += len(res.windows)
      self.seconds += res.seconds

  def rates(self) -> str:
    elapsed = max(time.monotonic() - self.start, 1e-9)
    audio = (f"{self.seconds / 3600:.2f} h" if self.seconds >= 360 else
             f"{self.seconds / 60:.1f} min")
    return f"{audio} of audio, {self.windows / elapsed:.0f} windows/s"

  def eta(self) -> str:
    elapsed = time.monotonic() - self.start
    left = elapsed * (self.total_bytes - self.bytes) / max(self.bytes, 1)
    return f"ETA {left / 60:.0f} min" if left >= 90 else f"ETA {left:.0f} s"


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
