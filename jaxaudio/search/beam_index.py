"""`search index` on Apache Beam: the embedding of an archive spread over a runner's workers.

  python -m jaxaudio.search index --model=EXPORT --audio=FOLDER --index=PATH \
      --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

Beam's own pipeline options (--runner and whatever that runner takes) pass through to Beam
untouched (jaxaudio.runtime.beam_options); without --runner `search index` is the single-process
jaxaudio.search.indexer. The pipeline:

  driver   list the folder, find what is new or changed (as indexer.update does), cut that
           list into shards of whole files, each shard owning one segment name
  Beam     Create(shards) | Reshuffle | ParDo(EmbedShard) | WriteToText(shard records)
           EmbedShard loads the exported model once per worker (DoFn.setup), decodes and
           featurizes each file (jaxaudio.audio.featurize, the function the single-process
           path runs), embeds the windows in chunks of EMBED_CHUNK and writes the shard's
           segment (store.write_segment, fsynced) under the shard's own name; its output is
           one small JSON record: the shard's files, their row spans and the files skipped
  driver   one commit: the records become manifest entries, and indexer's writer swaps in
           the manifest (compaction, model copy and approximate index as a final commit of
           the single-process path does them)

Why it gives the single-process index row for row: the same featurize call and settings,
forward passes of the same batch size, and under YNNPACK a window's embedding does not
depend on the batch it shares (jaxaudio.runtime.xla_cpu), so although the shards cut the
chunks at other files, every row is bitwise the same (tests/test_search_beam.py).

Why a retried shard adds no rows: a shard's segment name is fixed by the driver before the
pipeline starts, so a retry (or a speculative second attempt) overwrites the same file with
the same bytes, and the driver keeps one record per shard id. A failed pipeline commits
nothing: the previous index stays, the segments it wrote are orphans the next run removes
(store.remove_unreferenced); rerunning the command embeds the same files again (the
resumable commits of the single-process path are per process, this path's is per job).

Where the files live: the workers read the audio and the exported model and write segments
under --index by POSIX paths, so on a cluster those must be on a filesystem every worker
mounts (NFS, Filestore, a FUSE-mounted bucket); the shard records go through Beam's file
system layer under --temp_location (gs://, hdfs://, s3:// or a shared folder), local temp
when it is not given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
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
from apache_beam.io.filesystems import FileSystems  # noqa: E402

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
  """Decode, featurize and embed a shard's files; write its segment; emit its record."""

  def __init__(self, index_path: str, export_dir: str, settings: featurize.Settings,
               batch_size: int, max_seconds: float | None):
    super().__init__()
    self.index_path, self.export_dir, self.settings = index_path, export_dir, settings
    self.batch_size, self.max_seconds = batch_size, max_seconds
    self.model = None

  def setup(self):
    with _ONE_AT_A_TIME:   # loaded once per worker process
      if self.export_dir not in _MODELS:
        _MODELS[self.export_dir] = exported.load(self.export_dir)
      self.model = _MODELS[self.export_dir]

  def process(self, shard: Shard):
    with _ONE_AT_A_TIME:
      record = self._embed(shard)
    yield record

  def _embed(self, shard: Shard) -> str:
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
    return json.dumps({"shard": shard.shard, "segment": shard.segment, "rows": start,
                      "files": files, "skipped": skipped, "pid": os.getpid()})


def build(pipeline: beam.Pipeline, shards: list[Shard], embed: EmbedShard,
          records: str) -> None:
  """The pipeline's transforms: shards in, one JSON record per shard under `records`."""
  _ = (pipeline
       | "Shards" >> beam.Create(shards)
       | "Spread" >> beam.Reshuffle()
       | "Embed" >> beam.ParDo(embed)
       | "Records" >> beam.io.WriteToText(records, file_name_suffix=".jsonl"))


def _read_records(prefix: str) -> list[dict[str, Any]]:
  lines = []
  for match in FileSystems.match([prefix + "*.jsonl"]):
    for meta in match.metadata_list:
      with FileSystems.open(meta.path) as f:
        lines += [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
  return lines


# --- the driver -----------------------------------------------------------------------------

def update(index_path: str, audio: str, export_dir: str, pipeline_args: list[str],
           rebuild: bool = False, strict: bool = False, with_ann: bool | None = None,
           batch_size: int = 64, progress: bool = True, hop: float | None = None,
           max_seconds: float | None = DEFAULT_MAX_SECONDS) -> dict[str, Any]:
  """indexer.update with the embedding run as a Beam pipeline under `pipeline_args`; the
  same summary (plus windows, shards and workers)."""
  t0 = time.perf_counter()
  options = pipeline_options(pipeline_args)
  scanned, listed_skipped = indexer.scan(audio, strict)
  index_path = indexer.index_folder(index_path)
  with store.writer_lock(index_path):
    summary = _update(index_path, scanned, export_dir, options, rebuild, strict, with_ann,
                      batch_size, progress, t0, hop, max_seconds)
  summary["skipped"] = listed_skipped + summary["skipped"]
  return summary


def _update(index_path, scanned, export_dir, options, rebuild, strict, with_ann, batch_size,
            progress, t0, hop, max_seconds) -> dict[str, Any]:
  # pylint: disable=protected-access
  meta = exported.load(export_dir).meta   # checked whole before any worker starts
  exists = os.path.isfile(os.path.join(index_path, store.MANIFEST))
  old = store.read_manifest(index_path) if exists else None
  store.remove_unreferenced(index_path, old)
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
      rebuild = False
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
  workers = worker_count(options)
  shards = plan_shards(todo, scanned, writer.generation, workers)
  records, skipped = _run(index_path, export_dir, indexer.search_settings(meta, hop), shards,
                          options, batch_size, max_seconds, progress,
                          int(meta["embedding_dim"]))
  errors = sorted(skipped, key=lambda s: s["path"])
  if strict and errors:
    raise SearchIndexError(f"{errors[0]['reason']} (strict mode stops at the first bad file; "
                           "without --strict such files are reported and skipped)")
  for s in errors:
    live.pop(s["path"], None)    # a changed file that no longer decodes loses its old rows
  windows = 0
  for r in records:
    if r["rows"]:
      writer.segments[r["segment"]] = r["rows"]
    for path, size, mtime, start, count, seconds in r["files"]:
      live[path] = store.Entry(path, size, mtime, r["segment"], start, count, seconds)
      windows += count
  writer.generation += len(shards)
  t_embed = time.perf_counter() - t0
  nothing_to_do = (old is not None and not old.unfinished and not rebuild and not todo
                   and not removed)
  manifest = writer.commit([], final=True, unchanged=nothing_to_do)
  return {"index": index_path, "files": len(manifest.files), "rows": manifest.live_rows,
          "added": len(todo) - updated - len(errors), "updated": updated, "removed": removed,
          "unchanged": unchanged, "skipped": errors, "embed_seconds": t_embed,
          "files_per_second": len(todo) / t_embed if todo else 0.0,
          "windows": windows, "windows_per_second": windows / t_embed if todo else 0.0,
          "shards": len(shards), "workers": len({r["pid"] for r in records}),
          "ann_recall_at_10": manifest.ann["recall_at_10"] if manifest.ann else None,
          "seconds": time.perf_counter() - t0}


def _run(index_path, export_dir, settings, shards, options, batch_size, max_seconds,
         progress, dim) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
  """Run the pipeline over `shards`; (one record per shard, every file skipped). Checks that
  every shard reported and that its segment holds the rows it says."""
  if not shards:
    return [], []
  every = options.get_all_options()
  own_tmp = not every.get("temp_location")
  tmp = tempfile.mkdtemp(prefix="jaxaudio-beam-") if own_tmp else FileSystems.join(
      every["temp_location"], f"jaxaudio-index-{os.getpid()}-{time.time_ns()}")
  prefix = FileSystems.join(tmp, "shards")
  embed = EmbedShard(index_path, export_dir, settings, batch_size, max_seconds)
  if progress:
    log.info("index: %d files in %d shards on %s", sum(len(s.files) for s in shards),
             len(shards), every.get("runner") or "DirectRunner")
  try:
    run_pipeline(options, lambda pipeline: build(pipeline, shards, embed, prefix),
                 SearchIndexError, "nothing was committed, the index is as before; fix the "
                 "cause and run the command again.")
    by_shard = {}
    for r in _read_records(prefix):
      by_shard.setdefault(r["shard"], r)    # a retried shard may report twice: same rows
  finally:
    if own_tmp:
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      FileSystems.delete([tmp])
  missing = [s.shard for s in shards if s.shard not in by_shard]
  if missing:
    raise SearchIndexError(f"the Beam pipeline finished without the records of shards "
                           f"{missing[:5]}; nothing was committed; run the command again.")
  records = [by_shard[s.shard] for s in shards]
  for r in records:   # the segment holds what the record says (shape and dtype checked)
    if r["rows"]:
      store.load_segment(index_path, r["segment"], r["rows"], dim)
  return records, [s for r in records for s in r["skipped"]]
