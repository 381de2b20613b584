"""`search index` on Apache Beam (jaxaudio/search/beam_index.py) against the single-process
index: the same rows bit for bit with 2 local worker processes, an update, a failed job that
keeps its finished shards and a rerun that embeds the rest, a shard run twice (a runner's
retry), and the remote runners' option sets."""

import os
import shutil
import signal
import subprocess
import sys
import time

import apache_beam as beam
import numpy as np
import pytest
import soundfile as sf

from datafixtures import SR, tone
from jaxaudio.audio import featurize
from jaxaudio.runtime import beam_options
from jaxaudio.runtime.errors import JaxAudioError, SearchIndexError
from jaxaudio.search import beam_index, indexer, store
# pylint: disable-next=unused-import
from test_search import _rows_by_file, collection, export_dir  # noqa: F401 (the fixtures)

TWO_WORKERS = ["--runner=DirectRunner", "--direct_num_workers=2",
               "--direct_running_mode=multi_processing"]
ONE_WORKER = ["--runner=DirectRunner", "--direct_num_workers=1"]


def _assert_same_index(got: str, want: str) -> None:
  """The same files (path, size, mtime, rows, seconds) in manifest order, and each file's
  window offsets and embeddings equal bit for bit; a live manifest with no leftovers."""
  a, b = store.read_manifest(got), store.read_manifest(want)
  key = lambda m: [(e.path, e.size, e.mtime_ns, e.count, e.seconds) for e in m.files]  # noqa: E731
  assert key(a) == key(b)
  assert a.model == b.model and a.unfinished is None
  ra, rb = _rows_by_file(got), _rows_by_file(want)
  for path, (emb, off) in rb.items():
    assert np.array_equal(ra[path][1], off), path
    assert np.array_equal(ra[path][0], emb), path
  names = {store.LOCK, store.MANIFEST, store.MODEL}
  names |= {f"{s}.{k}.npy" for s in a.segments for k in ("emb", "off")}
  assert set(os.listdir(got)) == names | ({a.ann["file"]} if a.ann else set())


# The job killed at an event, not a time: the driver takes in one shard's record, commits it
# and says so in a file, then stops there while the workers go on; the test SIGKILLs the
# driver and its worker processes together.
_KILLED_INDEX = """
import os, runpy, sys, time
from jaxaudio.search import beam_index
real_read, real_take = beam_index.read_records, beam_index._Committer.take
def first_only(folder):
  return dict(sorted(real_read(folder).items())[:1])
def take(self, force=False):
  if real_take(self, force):
    open(os.environ["PAUSED"], "w").close()
    while True:
      time.sleep(60)
  return False
beam_index.read_records, beam_index._Committer.take = first_only, take
sys.argv = ["jaxaudio.search"] + sys.argv[1:]
runpy.run_module("jaxaudio.search", run_name="__main__", alter_sys=True)
"""


def test_two_beam_workers_killed_and_rerun_give_the_single_process_index_row_for_row(
    collection, export_dir, tmp_path, cli):
  audio = str(tmp_path / "audio")
  shutil.copytree(collection, audio)
  single, on_beam = str(tmp_path / "single"), str(tmp_path / "beam")
  want = indexer.update(single, audio, export_dir, workers=1, progress=False)
  # A job of 2 worker processes SIGKILLed (driver and workers) after its first commit.
  args = [f"--model={export_dir}", f"--audio={audio}", f"--index={on_beam}", *TWO_WORKERS]
  paused = tmp_path / "paused"
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_INDEX, "index", *args,
                           "--commit_files=1"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)),
                          env=dict(os.environ, PAUSED=str(paused)))
  try:
    while not paused.exists() and proc.poll() is None:
      time.sleep(0.05)
    assert paused.exists(), proc.stderr.read()[-3000:]
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  killed = store.read_manifest(on_beam)
  scanned, _ = indexer.scan(audio, False)
  plan = beam_index.plan_shards(sorted(scanned), scanned, 0, 2)
  shard_files = [{p for p, _, _ in s.files if not p.endswith("broken.wav")} for s in plan]
  # one shard's record committed: whichever reached the job folder first (its files, or none
  # when that shard held only the broken file)
  assert killed.unfinished and {e.path for e in killed.files} in shard_files
  # The rerun, through the command line: Beam's own option names pass through.
  r = cli("jaxaudio.search", "index", *args[:4], "--direct_num_workers=2",
          "--direct_running_mode", "multi_processing")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"{want['files']} files, {want['rows']} windows" in r.stdout
  assert f"added {want['files'] - len(killed.files)}," in r.stdout
  assert "skipped: " in r.stdout and "broken.wav" in r.stdout
  # The console carries our lines only: no Beam, gRPC, TensorFlow or XLA start-up chatter.
  assert "apache_beam" not in r.stderr and "INFO" not in r.stderr, r.stderr[-2000:]
  _assert_same_index(on_beam, single)   # the killed job's orphans and job folder gone
  manifest = store.read_manifest(on_beam)
  assert len(manifest.segments) >= 2

  # An update on Beam (in-process runner): one file changed, one deleted, one new.
  changed = os.path.abspath(os.path.join(audio, "low", sorted(os.listdir(
      os.path.join(audio, "low")))[0]))
  sf.write(changed, tone(700, 2.0, seed=7), SR)
  os.remove(os.path.join(audio, "long_sweep.wav"))
  sf.write(os.path.join(audio, "new.wav"), tone(900, 1.5, seed=8), SR)
  want = indexer.update(single, audio, export_dir, workers=1, progress=False)
  got = beam_index.update(on_beam, audio, export_dir, ONE_WORKER, progress=False)
  assert {k: got[k] for k in ("files", "rows", "added", "updated", "removed", "unchanged")} == \
      {k: want[k] for k in ("files", "rows", "added", "updated", "removed", "unchanged")}
  embedded = [e.count for e in store.read_manifest(single).files
              if e.path in (changed, os.path.abspath(os.path.join(audio, "new.wav")))]
  assert len(embedded) == 2 and got["workers"] == 1 and got["windows"] == sum(embedded)
  _assert_same_index(on_beam, single)


def test_a_failed_job_keeps_its_finished_shards_a_rerun_embeds_the_rest_and_retries_add_nothing(
    collection, export_dir, tmp_path, monkeypatch):
  audio = str(tmp_path / "audio")
  shutil.copytree(collection, audio)
  single, on_beam = str(tmp_path / "single"), str(tmp_path / "beam")
  indexer.update(single, audio, export_dir, workers=1, progress=False)
  want = {e.path: e.count for e in store.read_manifest(single).files}
  real = beam_index.write_record
  lost = {2}

  def lost_before_reporting(folder, record):   # a worker lost after its segment, before its record
    if record["shard"] in lost:
      raise RuntimeError("worker lost")
    real(folder, record)

  monkeypatch.setattr(beam_index, "write_record", lost_before_reporting)
  with pytest.raises(SearchIndexError, match="Beam pipeline failed.*worker lost.*shards that "
                     "finished are committed.*embeds only what is not committed"):
    beam_index.update(on_beam, audio, export_dir, ONE_WORKER, progress=False, commit_files=1)
  scanned, _ = indexer.scan(audio, False)
  shards = beam_index.plan_shards(sorted(scanned), scanned, 0, 1)
  lost_files = {p for p, _, _ in shards[2].files}
  m = store.read_manifest(on_beam)
  committed = {e.path for e in m.files}
  assert m.unfinished and committed and not committed & lost_files
  assert "seg-000003.emb.npy" in os.listdir(on_beam)   # shard 2's orphan segment
  mine, theirs = _rows_by_file(on_beam), _rows_by_file(single)
  for path in committed:   # what was committed is the single-process index's, bit for bit
    assert np.array_equal(mine[path][0], theirs[path][0]), path
  monkeypatch.setattr(beam_index, "write_record", real)

  # The rerun embeds only what was not committed, and a shard run twice (a runner's retry or
  # speculative second attempt, both records reaching the driver) rewrites the same segment
  # and is taken in once.
  plan = beam_index.plan_shards

  def twice(*args):
    shards = plan(*args)
    return shards + [shards[-1]]

  monkeypatch.setattr(beam_index, "plan_shards", twice)
  got = beam_index.update(on_beam, audio, export_dir, ONE_WORKER, progress=False)
  assert got["windows"] == sum(c for p, c in want.items() if p not in committed)
  _assert_same_index(on_beam, single)   # no leftover: the orphan and the job folder removed
  m = store.read_manifest(on_beam)
  assert len({e.path for e in m.files}) == len(m.files) == len(want)
  assert m.live_rows == sum(m.segments.values())   # no row stored twice
  monkeypatch.setattr(beam_index, "plan_shards", plan)

  # A failed update keeps the previous commit's files and rows as they were.
  before = store.read_manifest(on_beam).files, _rows_by_file(on_beam)
  os.utime(os.path.join(audio, "long_sweep.wav"))
  lost.add(0)   # the update's one shard
  monkeypatch.setattr(beam_index, "write_record", lost_before_reporting)
  try:
    with pytest.raises(SearchIndexError, match="the rest of the index is as before"):
      beam_index.update(on_beam, audio, export_dir, ONE_WORKER, progress=False)
  finally:
    monkeypatch.setattr(beam_index, "write_record", real)
  assert store.read_manifest(on_beam).files == before[0]
  after = _rows_by_file(on_beam)
  assert all(np.array_equal(after[p][0], e) for p, (e, _) in before[1].items())


def test_pipeline_options_split_from_ours_and_each_remote_runner_builds_the_pipeline():
  from absl import flags
  fv = flags.FlagValues()
  flags.DEFINE_string("index", None, "", flag_values=fv)
  flags.DEFINE_string("labels", None, "", flag_values=fv)
  argv = ["prog", "index", "--index=I", "--runner", "DirectRunner", "--direct_num_workers=2",
          "--labels=db.sqlite", "--not_a_flag=1"]
  kept, passed = beam_options.split_pipeline_args(argv, fv)
  assert passed == ["--runner", "DirectRunner", "--direct_num_workers=2"]
  assert kept == ["prog", "index", "--index=I", "--labels=db.sqlite", "--not_a_flag=1"]
  with pytest.raises(JaxAudioError, match="direct_num_workers.*invalid int value"):
    beam_options.pipeline_options(["--runner=DirectRunner", "--direct_num_workers=two"])
  with pytest.raises(JaxAudioError, match="--runner=Bogus is not a Beam runner"):
    beam_options.pipeline_options(["--runner=Bogus"])
  files = {f"/shared/audio/{i}.wav": (100, i) for i in range(40)}
  for name, want_workers in (("DataflowRunner", 32), ("FlinkRunner", 16), ("SparkRunner", 1)):
    args = beam_options.EXAMPLE_OPTIONS[name]
    options = beam_options.pipeline_options(args)
    assert options.get_all_options()["runner"] == name
    assert beam_options.worker_count(options) == want_workers
    shards = beam_index.plan_shards(sorted(files), files, 5, beam_options.worker_count(options))
    assert [p for s in shards for p, _, _ in s.files] == sorted(files)   # each file once
    assert [s.segment for s in shards] == [store.segment_name(6 + k) for k in range(len(shards))]
    pipeline = beam.Pipeline(options=options)
    beam_index.build(pipeline, shards, beam_index.EmbedShard(
        "/shared/index", "beam-000006", "/shared/model", featurize.Settings(), 64, None))
    proto = pipeline.to_runner_api()
    assert type(pipeline.runner).__name__ == name
    labels = {t.unique_name for t in proto.components.transforms.values()}
    assert {"Shards", "Spread", "Embed"} <= labels
