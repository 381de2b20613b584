"""`search index` on Apache Beam: the embedding of an archive spread over a runner's workers.

  python -m jaxaudio.search index --model=EXPORT --audio=FOLDER --index=PATH \
      --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

Beam's own pipeline options (--runner and whatever that runner takes) pass through to Beam
untouched (jaxaudio.runtime.beam_options); without --runner `search index` is the single-process
jaxaudio.search.indexer. The pipeline:

  driver   list the folder, find what is new or changed (as indexer.update does), cut that
           list into shards of whole files, each shard owning one segment name, and commit
           the reservation of those names (so no later run reuses one)
  Beam     Create(shards) | Reshuffle | ParDo(EmbedShard)
           EmbedShard loads the exported model once per worker (DoFn.setup), decodes and
           featurizes each file (jaxaudio.audio.featurize, the function the single-process
           path runs), embeds the windows in chunks of EMBED_CHUNK, writes the shard's
           segment (store.write_segment, fsynced) under the shard's own name, then its done
           record: one small JSON file in the job's folder PATH/beam-G/ (the shard's files,
           their row spans and the files skipped), written under a temporary name and renamed
  driver   while the pipeline runs, a committer thread takes in the done records and commits
           them as the single-process path commits (every COMMIT_FILES files or
           COMMIT_SECONDS): the shards' segments and an atomic manifest swap, marked
           unfinished; when the pipeline has finished, the final commit (compaction, model
           copy and approximate index as the single-process path's final commit does them)

Why it gives the single-process index row for row: the same featurize call and settings,
forward passes of the same batch size, and under YNNPACK a window's embedding does not
depend on the batch it shares (jaxaudio.runtime.xla_cpu), so although the shards cut the
chunks at other files, every row is bitwise the same (tests/test_search_beam.py).

Why it resumes: a job killed at any moment (driver, workers, the machine) keeps every shard
it committed; the rerun of the same command finds those files in the manifest unchanged and
plans shards of the rest only, so what a kill loses is the shards in flight (at most one per
worker, SHARD_FILES files each) and the done records of the last commit interval. A failed
pipeline commits the records that reached the job folder before it raises its sentence.

Why a retried shard adds no rows: a shard's segment name is fixed by the driver before the
pipeline starts and committed as reserved, so a retry (or a speculative second attempt)
overwrites the same file with the same bytes and the same done record, and the driver takes
in one record per shard; a worker of a killed job that is still running writes under names
no later run uses, into a job folder the rerun has removed (its writes fail). Orphans are
removed by the next commit (store.remove_unreferenced), the in-flight names excepted.

Where the files live: the workers read the audio and the exported model and write segments
under --index by POSIX paths, so on a cluster those must be on a filesystem every worker
mounts (NFS, Filestore, a FUSE-mounted bucket); the done records too (they sit beside the
segments). --temp_location is the runner's own (Dataflow stages through it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np

from jaxaudio.runtime import xla_cpu

# A worker process imports this module to unpickle EmbedShard: the YNNPACK kernels of the
# single-process command go in before JAX starts there too, so the rows are the same bits.
xla_cpu.apply()

# pylint: disable=wrong-import-position
# beam_options first: it imports Beam with its import-time warnings silenced
from jaxaudio.runtime.beam_options import (  # noqa: E402
    pipeline_options, run_pipeline, worker_count)
import apache_beam as beam  # noqa: E402

from jaxaudio.audio import featurize  # noqa: E402
from jaxaudio.audio.io import DEFAULT_MAX_SECONDS  # noqa: E402
from jaxaudio.inference import exported  # noqa: E402
from jaxaudio.runtime.errors import SearchIndexError  # noqa: E402
from jaxaudio.search import indexer, store  # noqa: E402

log = logging.getLogger("jaxaudio")

SHARD_FILES = 256   # most files in one shard (one segment); fewer when that keeps workers busy
SHARDS_PER_WORKER = 4

# --- the pipeline ---------------------------------------------------------------------------

@dataclasses.dataclass
class Shard:
  """Whole files embedded by one worker into one segment of the index."""

  shard: int
  segment: str
  files: list[tuple[str, int, int]]   # path, size, mtime_ns


def plan_shards(todo: list[str], scanned: dict[str, tuple[int, int]], generation: int,
                workers: int) -> list[Shard]:
  """`todo` (in path order) cut into contiguous shards of at most SHARD_FILES files, at least
  SHARDS_PER_WORKER per worker when there are files enough; shard k writes segment
  seg-(generation + 1 + k), names no commit has used."""
  if not todo:
    return []
  count = max(-(-len(todo) // SHARD_FILES), min(len(todo), SHARDS_PER_WORKER * workers))
  bounds = np.linspace(0, len(todo), count + 1).round().astype(int)
  return [Shard(k, store.segment_name(generation + 1 + k),
                [(p, *scanned[p]) for p in todo[lo:hi]])
          for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]


# One model and one shard at a time per worker process. Beam's SDK harness may run several
# bundles of a process in threads at once, each with its own DoFn instance: they share the
# model loaded first and take turns, so a worker process holds one copy of the model and its
# forward passes do not compete with each other for XLA's threads (as in the single-process
# command; rows computed by two threads at once were checked bitwise equal, so this is about
# memory and threads, not about the numbers).
_MODELS: dict[str, exported.ExportedModel] = {}
_ONE_AT_A_TIME = threading.Lock()


class EmbedShard(beam.DoFn):
  """Decode, featurize and embed a shard's files; write its segment, then its done record."""

  def __init__(self, index_path: str, job: str, export_dir: str,
               settings: featurize.Settings, batch_size: int, max_seconds: float | None):
    super().__init__()
    self.index_path, self.job, self.export_dir = index_path, job, export_dir
    self.settings, self.batch_size, self.max_seconds = settings, batch_size, max_seconds
    self.model = None

  def setup(self):
    with _ONE_AT_A_TIME:   # loaded once per worker process
      if self.export_dir not in _MODELS:
        _MODELS[self.export_dir] = exported.load(self.export_dir)
      self.model = _MODELS[self.export_dir]

  def process(self, shard: Shard):
    with _ONE_AT_A_TIME:
      write_record(os.path.join(self.index_path, self.job), self._embed(shard))
    yield shard.shard

  def _embed(self, shard: Shard) -> dict[str, Any]:
    spec = self.model.meta["frontend"]
    embedder = indexer._Embedder(self.model, self.batch_size)  # pylint: disable=protected-access
    skipped = []
    for i, (path, size, mtime) in enumerate(shard.files):
      res = featurize.featurize(i, spec, self.settings, path=path, max_seconds=self.max_seconds)
      if res.error:
        skipped.append({"path": path, "reason": res.error})
        continue
      embedder.add(path, size, mtime, res.windows, res.offsets, res.seconds)
    done = embedder.take()
    files, start = [], 0
    if done:
      store.write_segment(self.index_path, shard.segment, np.concatenate([d[3] for d in done]),
                          np.concatenate([d[4] for d in done]))
      for path, size, mtime, rows, _, seconds in done:
        files.append([path, size, mtime, start, len(rows), float(seconds)])
        start += len(rows)
    return {"shard": shard.shard, "segment": shard.segment, "rows": start, "files": files,
            "skipped": skipped, "pid": os.getpid()}


def write_record(folder: str, record: dict[str, Any]) -> None:
  """A shard's done record into the job folder: fsynced under a temporary name, then renamed
  (a retry renames the same content over it). The folder must exist: a job the driver has
  given up (a killed job's rerun removed its folder) cannot report into a later one."""
  name = os.path.join(folder, f"shard-{record['shard']:06d}.json")
  tmp = f"{name}.tmp-{os.getpid()}-{threading.get_ident()}"
  with open(tmp, "w") as f:
    json.dump(record, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, name)
  store.fsync_path(folder)


def read_records(folder: str) -> dict[int, dict[str, Any]]:
  """The done records in the job folder, by shard."""
  out = {}
  for name in sorted(os.listdir(folder)):
    if name.startswith("shard-") and name.endswith(".json"):
      with open(os.path.join(folder, name)) as f:
        record = json.load(f)
      out[record["shard"]] = record
  return out


def build(pipeline: beam.Pipeline, shards: list[Shard], embed: EmbedShard) -> None:
  """The pipeline's transforms: shards in, a segment and a done record per shard out."""
  _ = (pipeline
       | "Shards" >> beam.Create(shards)
       | "Spread" >> beam.Reshuffle()
       | "Embed" >> beam.ParDo(embed))


# --- the driver -----------------------------------------------------------------------------

def update(index_path: str, audio: str, export_dir: str, pipeline_args: list[str],
           rebuild: bool = False, strict: bool = False, with_ann: bool | None = None,
           batch_size: int = 64, progress: bool = True, hop: float | None = None,
           max_seconds: float | None = DEFAULT_MAX_SECONDS, commit_files: int | None = None,
           commit_seconds: float | None = None) -> dict[str, Any]:
  """indexer.update with the embedding run as a Beam pipeline under `pipeline_args`,
  committed as the shards finish (commit_files / commit_seconds as indexer.update takes
  them); the same summary (plus windows, shards and workers)."""
  t0 = time.perf_counter()
  options = pipeline_options(pipeline_args)
  scanned, listed_skipped = indexer.scan(audio, strict)
  index_path = indexer.index_folder(index_path)
  every = (commit_files or indexer.COMMIT_FILES, commit_seconds or indexer.COMMIT_SECONDS)
  with store.writer_lock(index_path):
    summary = _update(index_path, scanned, export_dir, options, rebuild, strict, with_ann,
                      batch_size, progress, t0, hop, max_seconds, every)
  summary["skipped"] = listed_skipped + summary["skipped"]
  return summary


def _update(index_path, scanned, export_dir, options, rebuild, strict, with_ann, batch_size,
            progress, t0, hop, max_seconds, every) -> dict[str, Any]:
  # pylint: disable=protected-access
  meta = exported.load(export_dir).meta   # checked whole before any worker starts
  exists = os.path.isfile(os.path.join(index_path, store.MANIFEST))
  old = store.read_manifest(index_path) if exists else None
  store.remove_unreferenced(index_path, old)   # a killed job's orphans and job folder
  if hop is None and old is not None and not rebuild:
    hop = old.model.get("settings", {}).get("window_hop")
  if hop is not None and not 0.0 < hop <= 1.0:
    raise SearchIndexError(f"--hop={hop} is not a fraction of a window in (0, 1]; e.g. 0.25 "
                           "for a window every quarter window.")
  ident = store.model_identity(
      {**meta, "settings": dataclasses.asdict(indexer.search_settings(meta, hop))})
  if old is not None and old.unfinished:
    if with_ann is None:
      with_ann = old.unfinished.get("ann") or None
    if rebuild and old.unfinished.get("fresh") and old.model == ident:
      rebuild = False   # the same rebuild, killed before: its committed rows stand
  if old is not None and not rebuild:
    indexer._check_same_model(index_path, old.model, ident)
  previous = {} if old is None or rebuild else {e.path: e for e in old.files}
  live, removed = {}, 0
  for path, e in previous.items():
    if os.path.exists(path):
      live[path] = e
    else:
      removed += 1
  todo = [p for p in sorted(scanned)
          if p not in live or scanned[p] != (live[p].size, live[p].mtime_ns)]
  updated = sum(p in previous for p in todo)
  unchanged = len(previous) - removed - updated
  writer = indexer._Writer(index_path, export_dir, ident, old, old is None or rebuild, live,
                           with_ann)
  shards = plan_shards(todo, scanned, writer.generation, worker_count(options))
  committer = _Committer(writer, shards, strict, every, progress)
  if shards:
    run_job(index_path, export_dir, indexer.search_settings(meta, hop), shards, options,
            batch_size, max_seconds, progress, committer)
  errors = sorted(committer.skipped, key=lambda s: s["path"])
  if strict and errors:
    raise SearchIndexError(f"{errors[0]['reason']} (strict mode stops at the first bad file; "
                           "without --strict such files are reported and skipped; the files "
                           "of the other shards are committed)")
  t_embed = time.perf_counter() - t0
  nothing_to_do = (old is not None and not old.unfinished and not rebuild and not todo
                   and not removed)
  manifest = writer.commit([], final=True, unchanged=nothing_to_do)
  return {"index": index_path, "files": len(manifest.files), "rows": manifest.live_rows,
          "added": len(todo) - updated - len(errors), "updated": updated, "removed": removed,
          "unchanged": unchanged, "skipped": errors, "embed_seconds": t_embed,
          "files_per_second": len(todo) / t_embed if todo else 0.0,
          "windows": committer.windows,
          "windows_per_second": committer.windows / t_embed if todo else 0.0,
          "shards": len(shards), "workers": len(committer.pids),
          "ann_recall_at_10": manifest.ann["recall_at_10"] if manifest.ann else None,
          "seconds": time.perf_counter() - t0}


class _Committer:
  """Takes a job's done records into the index as they come: every `every` = (files,
  seconds), whichever first, the shards' segments and a manifest swap (indexer._Writer),
  marked unfinished until the final commit; a shard's record is taken once (a retry's
  second record is the same)."""

  POLL_SECONDS = 0.5

  def __init__(self, writer, shards: list[Shard], strict: bool, every: tuple[int, float],
               progress: bool):
    self.writer, self.strict, self.every, self.progress = writer, strict, every, progress
    self.shards = {s.shard: s for s in shards}
    self.job = f"beam-{writer.generation + 1:06d}"
    self.taken: dict[int, dict[str, Any]] = {}
    self.skipped: list[dict[str, str]] = []
    self.pids: set[int] = set()
    self.windows = self.files = 0
    self.seconds = 0.0
    self.total = sum(len(s.files) for s in shards)
    self.t0 = self._last = time.monotonic()

  def reserve(self) -> str:
    """Make the job folder and commit the reservation of the shards' segment names (the
    manifest's generation passes them, so no later run reuses one); the job folder."""
    folder = os.path.join(self.writer.path, self.job)
    os.makedirs(folder, exist_ok=True)
    self.writer.in_flight = frozenset(
        {self.job} | {f"{s.segment}.{k}.npy" for s in self.shards.values()
                      for k in ("emb", "off")})
    self.writer.generation += len(self.shards)
    self.writer.commit([], final=False)
    return folder

  def take(self, force: bool = False) -> bool:
    """Take in the records not taken yet; commit when there are files of `every` or its
    seconds have passed since the last commit (or `force`). Whether it committed."""
    new = {k: r for k, r in read_records(os.path.join(self.writer.path, self.job)).items()
           if k in self.shards and k not in self.taken}
    if not new:
      return False
    pending = sum(len(r["files"]) + len(r["skipped"]) for r in new.values())
    if not force and pending < self.every[0] and time.monotonic() - self._last < self.every[1]:
      return False
    for k, r in sorted(new.items()):
      self._check(r)
      for s in r["skipped"]:
        self.writer.live.pop(s["path"], None)   # a changed file that no longer decodes
      self.writer.adopt(r["segment"], r["rows"], r["files"])
      self.taken[k] = r
      self.skipped += r["skipped"]
      self.pids.add(r["pid"])
      self.windows += r["rows"]
      self.files += len(r["files"]) + len(r["skipped"])
      self.seconds += sum(f[5] for f in r["files"])
    self.writer.commit([], final=False)
    self._last = time.monotonic()
    if self.progress:
      log.info("index: committed %d/%d files in %d/%d shards (%s)", self.files, self.total,
               len(self.taken), len(self.shards), self.rates())
    return True

  def _check(self, r: dict[str, Any]) -> None:
    """The segment holds what the record says (shape and dtype checked), under the name the
    driver gave the shard."""
    if r["segment"] != self.shards[r["shard"]].segment:
      raise SearchIndexError(f"shard {r['shard']} reported segment {r['segment']}, planned "
                             f"{self.shards[r['shard']].segment}; run the command again.")
    if r["rows"]:
      store.load_segment(self.writer.path, r["segment"], r["rows"],
                         int(self.writer.ident["embedding_dim"]))

  def rates(self) -> str:
    """Files, hours of audio, windows/s and an ETA, as the single-process bar shows them."""
    elapsed = max(time.monotonic() - self.t0, 1e-9)
    rate = self.files / elapsed
    eta = (self.total - self.files) / rate if rate else float("inf")
    when = "ETA unknown" if eta == float("inf") else f"ETA {eta / 60:.1f} min"
    return (f"{self.seconds / 3600:.2f} h of audio, {self.windows / elapsed:.1f} windows/s, "
            f"{when}")

  def missing(self) -> list[int]:
    return [k for k in self.shards if k not in self.taken]


def run_job(index_path, export_dir, settings, shards, options, batch_size, max_seconds,
            progress, committer: _Committer) -> None:
  """Run the pipeline over `shards` with `committer` taking in their records as they come
  (in a thread); the last records are taken when it ends, and on failure before its
  sentence is raised, so what finished stays committed."""
  folder = committer.reserve()
  embed = EmbedShard(index_path, committer.job, export_dir, settings, batch_size, max_seconds)
  if progress:
    log.info("index: %d files in %d shards on %s", committer.total, len(shards),
             options.get_all_options().get("runner") or "DirectRunner")
  stop, failed = threading.Event(), []

  def watch():
    try:
      while not stop.wait(committer.POLL_SECONDS):
        committer.take()
    except Exception as err:  # pylint: disable=broad-except   # raised in the main thread
      failed.append(err)

  thread = threading.Thread(target=watch, name="jaxaudio-beam-committer", daemon=True)
  thread.start()
  try:
    run_pipeline(options, lambda pipeline: build(pipeline, shards, embed),
                 SearchIndexError, "the shards that finished are committed, the rest of the "
                 "index is as before; fix the cause and run the command again (it embeds only "
                 "what is not committed).")
  finally:
    stop.set()
    thread.join()
    if not failed:
      committer.take(force=True)
  if failed:
    raise failed[0]
  missing = committer.missing()
  if missing:
    raise SearchIndexError(f"the Beam pipeline finished without the records of shards "
                           f"{missing[:5]} in {folder}; the other shards are committed; run "
                           "the command again (it embeds only what is not committed).")
