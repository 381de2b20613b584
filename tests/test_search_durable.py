"""A durable, resumable `search index`: real processes SIGKILLed at named points, then rerun.

Each kill is made by a child process that wraps one function of jaxaudio.search.store and
kills itself with SIGKILL right after its N-th call returns (a point in the commit sequence,
not a moment on the clock), so every assertion holds however loaded the machine is.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from datafixtures import SR, tone
from jaxaudio.runtime.errors import SearchIndexError
from jaxaudio.search import indexer, store
from jaxaudio.search.searcher import Searcher
# pylint: disable-next=unused-import
from test_search import _rows_by_file, collection, export_dir  # noqa: F401 (the fixtures)

# The child: wrap store.<name> so that the process dies by SIGKILL after its N-th call.
_DRIVER = """
import json, os, signal, sys
from jaxaudio.search import indexer, store
name, nth = sys.argv[1].split(":")
real, calls = getattr(store, name), []
def wrapped(*args, **kwargs):
  out = real(*args, **kwargs)
  calls.append(1)
  if len(calls) == int(nth):
    os.kill(os.getpid(), signal.SIGKILL)
  return out
setattr(store, name, wrapped)
indexer.update(**json.loads(sys.argv[2]))
"""


def _killed_at(point: str, **kwargs) -> None:
  """Run indexer.update(**kwargs) in a child that SIGKILLs itself at `point` (NAME:N)."""
  r = subprocess.run([sys.executable, "-c", _DRIVER, point, json.dumps(kwargs)],
                     capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]


def _assert_same_rows(got: str, want: str) -> None:
  """The same files with the same window offsets and embeddings, bit for bit: a window embeds
  alike whatever batch it shares (jaxaudio/runtime/xla_cpu.py), so resuming changes no number."""
  a, b = _rows_by_file(got), _rows_by_file(want)
  assert sorted(a) == sorted(b)
  for path, (emb, off) in b.items():
    assert np.array_equal(a[path][1], off), path
    assert np.array_equal(a[path][0], emb), path


def _assert_no_leftovers(index: str) -> None:
  m = store.read_manifest(index)
  assert m.unfinished is None and len({e.path for e in m.files}) == len(m.files)
  want = {store.LOCK, store.MANIFEST, store.MODEL}
  want |= {f"{s}.{k}.npy" for s in m.segments for k in ("emb", "off")}
  want |= {m.ann["file"]} if m.ann else set()
  assert set(os.listdir(index)) == want


def test_a_first_build_killed_anywhere_is_completed_by_the_next_run(collection, export_dir,
                                                                    tmp_path):
  index = str(tmp_path / "index")
  kw = dict(index_path=index, audio=collection, export_dir=export_dir, workers=1,
            progress=False, commit_files=2)
  # Killed while installing the model of its first commit: the folder issue 23 found
  # (.lock, model.tmp-PID, seg-000001.*, no index.json), which used to refuse every rerun.
  _killed_at("_fsync_tree:1", **kw)
  names = set(os.listdir(index))
  assert store.MANIFEST not in names and {".lock", "seg-000001.emb.npy"} <= names
  assert any(n.startswith("model.tmp-") for n in names)
  # Killed right after its second commit: a valid index of the first four files.
  _killed_at("write_manifest:2", **kw)
  m = store.read_manifest(index)
  assert len(m.files) == 4 and m.unfinished == {"fresh": True, "ann": False}
  assert len(Searcher(index).rows.files) == 4
  # Killed between a segment's write and the manifest that would name it: the orphan stays
  # behind, the last commit (six files) stands.
  _killed_at("write_segment:2", **kw)
  m = store.read_manifest(index)
  assert len(m.files) == 6 and len([n for n in os.listdir(index) if n.endswith(".emb.npy")]) > len(
      m.segments)
  # The rerun, --rebuild as the user may well type it, continues its own unfinished build.
  summary = indexer.update(**kw, rebuild=True)
  assert (summary["added"], summary["updated"], summary["removed"], summary["unchanged"],
          len(summary["skipped"]), summary["files"]) == (4, 0, 0, 6, 1, 10)
  _assert_no_leftovers(index)
  indexer.update(str(tmp_path / "whole"), collection, export_dir, workers=1, progress=False)
  _assert_same_rows(index, str(tmp_path / "whole"))


def test_a_killed_update_resumes_to_the_uninterrupted_result(collection, export_dir, tmp_path):
  audio, index = str(tmp_path / "audio"), str(tmp_path / "index")
  shutil.copytree(collection, audio)
  indexer.update(index, audio, export_dir, with_ann=True, workers=1, progress=False)
  before = {e.path: e for e in store.read_manifest(index).files}
  for name, freq in (("aa_new.wav", 900), ("mid/mid_5.wav", 1100)):
    sf.write(os.path.join(audio, name), tone(freq, 1.3, seed=7), SR)
  changed = [os.path.join(audio, "high", "high_1.wav"), os.path.join(audio, "mid", "mid_0.wav")]
  for path, freq in zip(changed, (1700, 2300)):
    sf.write(path, tone(freq, 2.5, seed=9), SR)
  os.remove(os.path.join(audio, "low", "low_1.wav"))
  os.symlink(str(tmp_path / "gone.wav"), os.path.join(audio, "zz_dangling.wav"))
  kw = dict(index_path=index, audio=audio, export_dir=export_dir, workers=1, progress=False,
            commit_files=2)
  # Killed after its first commit (aa_new.wav and high_1.wav of the four files to embed; no
  # --ann on the command line: the index's graph is kept).
  _killed_at("write_manifest:1", **kw)
  m = store.read_manifest(index)
  assert m.unfinished == {"fresh": False, "ann": True} and m.ann == store.read_manifest(
      index).ann
  paths = [e.path for e in m.files]
  assert len(paths) == len(set(paths)) == 10 and os.path.join(audio, "aa_new.wav") in paths
  assert os.path.join(audio, "low", "low_1.wav") not in paths
  for path in changed:   # a changed file has its old rows or its new ones, never both
    e = next(e for e in m.files if e.path == path)
    assert (e.size, e.mtime_ns) in ((before[path].size, before[path].mtime_ns),
                                    indexer._stat(path))  # pylint: disable=protected-access
  Searcher(index, use_ann=True)   # an intermediate manifest is a valid index, graph included
  # Killed between the next segment's write and its manifest.
  _killed_at("write_segment:1", **kw)
  assert store.read_manifest(index).generation == m.generation
  summary = indexer.update(**kw)
  assert (summary["added"] + summary["updated"], summary["removed"], summary["files"]) == (2, 0, 11)
  assert [os.path.basename(s["path"]) for s in summary["skipped"]] == ["zz_dangling.wav",
                                                                       "broken.wav"]
  _assert_no_leftovers(index)
  m = store.read_manifest(index)
  assert m.ann and m.ann["graph_rows"] - m.ann["dead_rows"] == m.live_rows
  indexer.update(str(tmp_path / "whole"), audio, export_dir, with_ann=True, workers=1,
                 progress=False)
  _assert_same_rows(index, str(tmp_path / "whole"))
  approx = Searcher(index, use_ann=True)
  for path in changed + [os.path.join(audio, "aa_new.wav")]:
    assert approx.search([approx.embed_audio(path)], k=1)[0][0].file == path


def test_every_file_a_manifest_names_is_fsynced_before_it_and_the_folder_after(
    collection, export_dir, tmp_path, monkeypatch, capsys):
  events = []
  real_fsync, real_replace = os.fsync, os.replace

  def fsync(fd):
    events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
    real_fsync(fd)

  def replace(src, dst):
    real_replace(src, dst)
    named = []
    if os.path.basename(dst) == store.MANIFEST:   # what this manifest names, as swapped in
      m = store.read_manifest(os.path.dirname(dst))
      named = [f"{s}.{k}.npy" for s in m.segments for k in ("emb", "off")]
      named += [m.ann["file"]] if m.ann else []
    events.append(("replace", os.path.abspath(src), os.path.abspath(dst), named))

  monkeypatch.setattr(os, "fsync", fsync)
  monkeypatch.setattr(os, "replace", replace)
  index = str(tmp_path / "index")
  indexer.update(index, collection, export_dir, with_ann=True, workers=1, progress=True,
                 commit_files=3)
  monkeypatch.undo()
  # Each commit is a progress line (stderr is no terminal here): files, audio, rate, ETA.
  assert len(re.findall(r"index: committed \d+/11 files \(\d+\.\d min of audio, \d+ "
                        r"windows/s, ETA \d+ s\)", capsys.readouterr().err)) == 3
  manifest = os.path.join(index, store.MANIFEST)
  commits = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == manifest]
  assert len(commits) == 4   # 10 files, a commit every 3 and the final one
  assert events[commits[-1]][3][-1].startswith("ann-")   # the graph comes with the last
  model_tmp = next(e[1] for e in events if e[0] == "replace" and e[2].endswith("/model"))
  for i in commits:
    synced = {e[1] for e in events[:i] if e[0] == "fsync"}
    assert {os.path.join(index, n) for n in events[i][3]} <= synced
    for folder, _, files in os.walk(os.path.join(index, "model")):   # the model, as copied
      rel = os.path.relpath(folder, os.path.join(index, "model"))
      assert {os.path.normpath(os.path.join(model_tmp, rel, f)) for f in files} <= synced
    assert events[i + 1] == ("fsync", index)   # the rename itself, made durable
  rename = events.index(next(e for e in events if e[0] == "replace" and e[2].endswith("/model")))
  assert ("fsync", index) in events[rename + 1:commits[0]]


def test_a_folder_with_foreign_files_or_no_audio_is_refused(collection, export_dir, tmp_path):
  index = tmp_path / "index"
  (index / "model.tmp-123").mkdir(parents=True)
  for name in (".lock", "seg-000001.emb.npy", "notes.txt"):
    (index / name).write_bytes(b"")
  with pytest.raises(SearchIndexError, match=r"exists and is not a search index \(it holds "
                     r"notes.txt\); pass a new or empty folder as --index\.$"):
    indexer.update(str(index), collection, export_dir, workers=1, progress=False)
  assert len(os.listdir(index)) == 4   # nothing of it touched
  mine = tmp_path / "mine"             # our names, but no lock file: not a build of ours
  (mine / "model").mkdir(parents=True)
  with pytest.raises(SearchIndexError, match=r"\(it holds model\)"):
    indexer.update(str(mine), collection, export_dir, workers=1, progress=False)
  assert os.listdir(mine) == ["model"]
  empty = tmp_path / "empty"
  (empty / "sub").mkdir(parents=True)
  (empty / "sub" / "readme.txt").write_text("no audio here")
  with pytest.raises(SearchIndexError, match=r"empty holds no audio files \(\.wav .*\); pass "
                     "--audio=FOLDER with the audio to index"):
    indexer.update(str(tmp_path / "new"), str(empty), export_dir, workers=1, progress=False)
  assert not os.path.exists(tmp_path / "new")
