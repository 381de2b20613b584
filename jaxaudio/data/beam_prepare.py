"""`prepare` on Apache Beam: the decoding and log-mel of a training set spread over a runner's
workers, the dataset written by the same TFDS builder as without Beam.

  python -m jaxaudio.prepare --config=configs/finetune.py \
      --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

Beam's own pipeline options pass through untouched (jaxaudio.runtime.beam_options); without
--runner `prepare` runs as before. Two steps:

  Beam     Create(shards) | Reshuffle | ParDo(FeaturizeShard)
           each shard is up to SHARD_CLIPS consecutive clips of one split; its worker runs
           jaxaudio.audio.featurize on each (the function the single-process path runs, with
           the same settings) and writes the shard's windows, offsets and errors as one .npz
           under the build folder (written to a temporary name and renamed, so a retried or
           speculative attempt leaves one complete file)
  driver   reads the shards back in listing order and hands the results to prepare's own
           TFDS builder (store_as_tfds_dataset), which numbers the clips, skips or refuses
           bad files and writes the array_record files and the report exactly as it does
           without Beam

Why the driver writes and not TFDS's BeamWriter: the clip numbers stored in every record
count only the files that decoded, so they are known once every earlier file is featurized;
and with shuffling disabled the BeamWriter cuts shards by key range where the plain writer
cuts them by count, so beyond one shard its files would not be the plain builder's. The work
Beam spreads is the decoding and featurizing (milliseconds to seconds a file); writing a
window costs about 0.2 ms. The result is the plain builder's bytes (tests/test_data_beam.py).

On a cluster the workers read the audio by its paths and write under data.prepared_dir, so
both must be on a filesystem every worker mounts at the same path (NFS, Filestore, a
FUSE-mounted bucket); the option sets per runner are beam_options.EXAMPLE_OPTIONS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator

import numpy as np

from jaxaudio.runtime.beam_options import pipeline_options, run_pipeline, worker_count
import apache_beam as beam  # after beam_options, which silences Beam's import warnings
from jaxaudio.audio import featurize
from jaxaudio.audio.featurize import Result
from jaxaudio.data.listing import SPLITS, Listing
from jaxaudio.runtime.errors import DataError

SHARD_CLIPS = 256     # most clips in one shard
SHARDS_PER_WORKER = 4


@dataclasses.dataclass
class Shard:
  """Consecutive clips of one split, featurized by one worker into one file."""

  name: str                    # <split>-<k>: the file <work>/<name>.npz
  tasks: list[tuple]           # featurize.run_task's tuples, as prepare.featurize_tasks makes


def plan_shards(tasks: dict[str, list[tuple]], workers: int) -> list[Shard]:
  """Every split's tasks ({split: tasks in listing order}) cut into contiguous shards of at
  most SHARD_CLIPS, at least SHARDS_PER_WORKER per worker over the whole set when there are
  clips enough."""
  total = sum(len(t) for t in tasks.values())
  per = max(1, min(SHARD_CLIPS, -(-total // max(1, SHARDS_PER_WORKER * workers))))
  shards = []
  for split in SPLITS:
    mine = tasks.get(split, [])
    for k, lo in enumerate(range(0, len(mine), per)):
      shards.append(Shard(f"{split}-{k:06d}", mine[lo:lo + per]))
  return shards


class FeaturizeShard(beam.DoFn):
  """Featurize a shard's clips and write them as one .npz; emits the shard's name."""

  def __init__(self, work: str, spec_dict: dict[str, Any], settings: featurize.Settings,
               max_seconds: float | None):
    super().__init__()
    self.work, self.spec_dict, self.settings = work, spec_dict, settings
    self.max_seconds = max_seconds

  def process(self, shard: Shard):
    results = [featurize.run_task(t, self.spec_dict, self.settings, self.max_seconds)
               for t in shard.tasks]
    write_shard(os.path.join(self.work, f"{shard.name}.npz"), results)
    yield shard.name


def write_shard(path: str, results: list[Result]) -> None:
  """The results of a shard's clips in one .npz (windows of all clips concatenated)."""
  good = [r for r in results if not r.error]
  arrays = {
      "windows": (np.concatenate([r.windows for r in good]) if good
                  else np.zeros((0, 1, 1), np.float16)),
      "offsets": (np.concatenate([r.offsets for r in good]) if good else np.zeros(0)),
      "meta": np.frombuffer(json.dumps([
          {"index": r.index, "error": r.error, "count": 0 if r.error else len(r.windows),
           "seconds": r.seconds, "source_rate": r.source_rate, "trimmed": r.trimmed,
           "offsets_dtype": None if r.error else str(r.offsets.dtype)}
          for r in results]).encode(), np.uint8)}
  tmp = f"{path}.tmp-{os.getpid()}-{time.time_ns()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def read_shard(path: str) -> Iterator[Result]:
  """The Results a shard's file holds, in the order of its clips."""
  with np.load(path) as f:
    windows, offsets = f["windows"], f["offsets"]
    meta = json.loads(f["meta"].tobytes().decode())
  at = 0
  for m in meta:
    if m["error"]:
      yield Result(m["index"], error=m["error"], seconds=m["seconds"],
                   source_rate=m["source_rate"])
      continue
    n = m["count"]
    yield Result(m["index"], windows[at:at + n],
                 offsets[at:at + n].astype(m["offsets_dtype"]), m["seconds"],
                 m["source_rate"], m["trimmed"])
    at += n


def featurize_on_beam(listing: Listing, tasks: dict[str, list[tuple]],
                      spec_dict: dict[str, Any], settings: featurize.Settings,
                      max_seconds: float | None, pipeline_args: list[str], work: str,
                      progress: bool) -> Callable[[str], Iterator[Result]]:
  """Run the pipeline over `tasks` ({split: featurize tasks in listing order}); returns
  results(split): that split's Results in listing order, read from the shards' files under
  `work` (which the caller removes when the build is done)."""
  if listing.tfds is not None:
    raise DataError(f"{listing.source} is a TFDS dataset: prepare runs on Beam over audio "
                    "files (a folder, a CSV or a manifest); prepare a TFDS source without "
                    "--runner.")
  options = pipeline_options(pipeline_args)
  shards = plan_shards(tasks, worker_count(options))
  os.makedirs(work, exist_ok=True)
  runner = options.get_all_options().get("runner") or "DirectRunner"
  clips = sum(len(s.tasks) for s in shards)
  if progress:
    print(f"prepare: {clips} files in {len(shards)} shards on {runner}", flush=True)
  start = time.perf_counter()
  featurize_shard = FeaturizeShard(work, spec_dict, settings, max_seconds)
  run_pipeline(options, lambda pipeline: (pipeline
                                          | "Shards" >> beam.Create(shards)
                                          | "Spread" >> beam.Reshuffle()
                                          | "Featurize" >> beam.ParDo(featurize_shard)),
               DataError, "nothing was written; fix the cause and run the command again.")
  missing = [s.name for s in shards if not os.path.isfile(os.path.join(work, f"{s.name}.npz"))]
  if missing:
    raise DataError(f"the Beam pipeline finished without the shards {missing[:5]} under {work} "
                    "(is data.prepared_dir on a filesystem every worker mounts?); run the "
                    "command again.")
  if progress:
    elapsed = time.perf_counter() - start
    print(f"prepare: featurized {clips} files on {runner} in {elapsed:.1f} s "
          f"({clips / max(elapsed, 1e-9):.1f} files/s); writing the dataset", flush=True)
  by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
  for shard in shards:
    by_split[shard.name.rsplit("-", 1)[0]].append(os.path.join(work, f"{shard.name}.npz"))

  def results(split: str) -> Iterator[Result]:
    for path in by_split[split]:
      yield from read_shard(path)
  return results
