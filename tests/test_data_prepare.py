"""Preparation: features equal the frontend's, caching, bad files, strictness, atomicity."""

import json
import os
import time

import numpy as np
import pytest
import soundfile as sf

from jaxaudio.audio import frontend
from jaxaudio.audio.io import load_audio
from jaxaudio.audio.preprocess import normalise_loudness
from jaxaudio.data import prepare as prep
from jaxaudio.runtime.errors import DataError, SpecMismatchError
from jaxaudio.models.registry import AISFX_SPEC, PANNS_SPEC
from datafixtures import data_config, tone, write_class_folder, SR


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_class_folder(str(tmp_path_factory.mktemp("clips")), per_class=5)


def test_prepare_folder_features_counts_and_report(tmp_path, folder):
  cfg = data_config(tmp_path, f"folder:{folder}", val_fraction=0.2, test_fraction=0.2)
  prepared, built = prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert built and prepared.classes == ["high", "low", "mid"]
  meta = prepared.meta
  assert {s: meta["splits"][s]["clips"] for s in ("train", "validation", "test")} == {
      "train": 9, "validation": 3, "test": 3}
  # Each record is exactly what the frontend gives for that clip (float16-rounded).
  src = prepared.data_source("train")
  rec = src[0]
  clip_key = meta["splits"]["train"]["clip_keys"][int(rec["clip"])]
  x = normalise_loudness(load_audio(os.path.join(folder, clip_key), 44100), "peak", -1.0)
  windows, starts = frontend.split_windows(frontend.log_mel(x, AISFX_SPEC), AISFX_SPEC, 50, True)
  np.testing.assert_array_equal(rec["mel"], windows[int(rec["window"])].astype(np.float16))
  assert rec["offset"] == pytest.approx(starts[int(rec["window"])] * 1024 / 44100)
  total = sum(len(frontend.split_windows(np.zeros((frontend.num_frames(n, AISFX_SPEC), 96)),
                                         AISFX_SPEC, 50, True)[1])
              for n in [sf.info(os.path.join(folder, k)).frames
                        for k in meta["splits"]["train"]["clip_keys"]])
  assert len(src) == prepared.num_windows("train") == total
  report = json.load(open(os.path.join(prepared.root, "report.json")))
  assert report["splits"]["train"]["class_clips"] == {"high": 3, "low": 3, "mid": 3}
  assert report["sample_rates"] == {"44100": 15} and sum(report["duration_histogram"]) == 15
  assert "| low | 3 | 1 | 1 |" in open(os.path.join(prepared.root, "report.md")).read()


def test_cache_hit_and_miss(tmp_path):
  root = write_class_folder(str(tmp_path / "clips"), per_class=3)
  cfg = data_config(tmp_path, f"folder:{root}", val_fraction=0.34, test_fraction=0.34)
  first, built1 = prep.prepare(cfg, AISFX_SPEC, progress=False)
  again, built2 = prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert built1 and not built2 and again.root == first.root
  sf.write(os.path.join(root, "low", "low_0.wav"), tone(210, 2.0), SR)   # a changed file
  changed, built3 = prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert built3 and changed.root != first.root
  cfg.denoise = 0.5                                                       # changed settings
  assert prep.prepare(cfg, AISFX_SPEC, progress=False)[0].root != changed.root


def _bad_files(root):
  d = os.path.join(root, "train", "low")
  open(os.path.join(d, "empty.wav"), "wb").close()
  good = open(os.path.join(d, "low_0.wav"), "rb").read()
  open(os.path.join(d, "truncated.wav"), "wb").write(good[: len(good) // 2])
  open(os.path.join(d, "notes.wav"), "w").write("these are my field notes, not audio\n")
  nan = tone(300, 1.0)
  nan[100] = np.nan
  sf.write(os.path.join(d, "nan.wav"), nan, SR, subtype="FLOAT")
  sf.write(os.path.join(d, "blip.wav"), tone(300, 0.02), SR)
  open(os.path.join(d, "readme.txt"), "w").write("not audio")
  return {"empty.wav": "empty", "truncated.wav": "truncated", "notes.wav": "cannot decode",
          "nan.wav": "NaN", "blip.wav": "shorter than data.min_seconds"}


def test_corrupt_files_are_reported_not_fatal(tmp_path):
  root = write_class_folder(str(tmp_path / "clips"), splits={"train": 3, "validation": 1,
                                                             "test": 1})
  expected = _bad_files(root)
  prepared, _ = prep.prepare(data_config(tmp_path, f"folder:{root}"), AISFX_SPEC, progress=False)
  report = json.load(open(os.path.join(prepared.root, "report.json")))
  skipped = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
  assert set(skipped) == set(expected)
  for name, words in expected.items():
    assert words in skipped[name] and name in skipped[name]
  assert report["ignored"][0]["path"].endswith("readme.txt")
  assert prepared.meta["splits"]["train"]["clips"] == 9   # every good file prepared
  for where in ("cached", "fresh"):  # strict refuses a cached build with skips, and a new one
    cfg = data_config(tmp_path / where if where == "fresh" else tmp_path, f"folder:{root}",
                      strict=True)
    with pytest.raises(DataError, match="strict mode stops at the first bad file"):
      prep.prepare(cfg, AISFX_SPEC, progress=False)


def test_interrupted_prepare_leaves_nothing_complete(tmp_path, monkeypatch):
  root = write_class_folder(str(tmp_path / "clips"), per_class=3)
  cfg = data_config(tmp_path, f"folder:{root}", val_fraction=0.34, test_fraction=0.34)
  real = prep.featurize.featurize
  calls = {"n": 0}

  def dying(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 5:
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(prep.featurize, "featurize", dying)
  with pytest.raises(KeyboardInterrupt):
    prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert os.listdir(tmp_path / "prepared") == []
  monkeypatch.setattr(prep.featurize, "featurize", real)
  prepared, built = prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert built and prep.is_complete(prepared.root)


def test_a_finished_build_is_never_deleted_by_a_host_that_finishes_at_the_same_time(
    tmp_path, monkeypatch):
  """Two hosts building the same data on shared storage finish together: this one looks for
  a complete build, finds none, and just then the other host renames its build into place.
  Both builds must survive that (readers may hold the other one open already)."""
  root = write_class_folder(str(tmp_path / "clips"), per_class=3)
  cfg = data_config(tmp_path, f"folder:{root}", val_fraction=0.34, test_fraction=0.34)
  first, _ = prep.prepare(cfg, AISFX_SPEC, progress=False)
  other = str(tmp_path / "other_host_build")
  os.rename(first.root, other)
  with open(os.path.join(other, "sentinel"), "w") as f:
    f.write("the other host's build")
  real_build, real_complete = prep._build, prep.is_complete
  state = {"built": False, "raced": False}

  def build(*args, **kwargs):
    real_build(*args, **kwargs)
    state["built"] = True

  def complete(path):
    answer = real_complete(path)
    if state["built"] and not state["raced"]:
      state["raced"] = True
      try:
        os.rename(other, first.root)   # the other host finishes right after this check
      except OSError:
        pass                           # this host's build was there first: it stays
    return answer

  monkeypatch.setattr(prep, "_build", build)
  monkeypatch.setattr(prep, "is_complete", complete)
  prepared, built = prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert built and real_complete(prepared.root) and prepared.root == first.root
  survivors = [d for d in (other, first.root) if os.path.isfile(os.path.join(d, "sentinel"))]
  assert survivors and real_complete(survivors[0])
  assert not [d for d in os.listdir(tmp_path / "prepared") if ".tmp-" in d]
  # A folder in the build's place that is no build: one sentence, nothing deleted.
  monkeypatch.setattr(prep, "_build", real_build)
  monkeypatch.setattr(prep, "is_complete", lambda path: False)
  with pytest.raises(DataError, match="holds no complete build"):
    prep.prepare(cfg, AISFX_SPEC, progress=False)
  assert real_complete(first.root)


def test_spec_mismatch_is_refused(tmp_path, folder):
  cfg = data_config(tmp_path, f"folder:{folder}", val_fraction=0.2, test_fraction=0.2)
  prepared, _ = prep.prepare(cfg, AISFX_SPEC, progress=False)
  with pytest.raises(SpecMismatchError, match="prepare the data again"):
    prep.open_prepared(prepared.root, PANNS_SPEC, model="panns_cnn14")


def test_worker_processes_give_identical_data(tmp_path, folder):
  one, _ = prep.prepare(data_config(tmp_path / "a", f"folder:{folder}", val_fraction=0.2,
                                    test_fraction=0.2), AISFX_SPEC, progress=False)
  two, _ = prep.prepare(data_config(tmp_path / "b", f"folder:{folder}", val_fraction=0.2,
                                    test_fraction=0.2, workers=2), AISFX_SPEC, progress=False)
  a, b = one.data_source("validation"), two.data_source("validation")
  assert len(a) == len(b) > 0
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]["mel"], b[i]["mel"])


_PAUSING_PREPARE = """
import os, runpy, sys, time
from jaxaudio.audio import featurize
real, calls = featurize.featurize, [0]
def paused(*args, **kwargs):
  calls[0] += 1
  if calls[0] == int(os.environ["PAUSE_AT"]):   # the last file: train and validation written
    open(os.environ["PAUSED"], "w").close()
    while True:
      time.sleep(60)                                  # the test SIGKILLs the process here
  return real(*args, **kwargs)
featurize.featurize = paused
sys.argv = ["jaxaudio.prepare"] + sys.argv[1:]
runpy.run_module("jaxaudio.prepare", run_name="__main__", alter_sys=True)
"""


def test_killed_prepare_never_looks_complete(tmp_path, cli):
  """SIGKILL a real `python -m jaxaudio.prepare` mid-build, then run it again. The kill comes
  at an event, not a time: the command pauses (and says so in a file) as it reaches the last
  file of the test split, after the train and validation splits were written."""
  import signal
  import subprocess
  import sys
  root = write_class_folder(str(tmp_path / "clips"), per_class=5, seconds=1.0)
  flags = ["--config=configs/folder.py", f"--config.data.source=folder:{root}",
           f"--config.data.prepared_dir={tmp_path / 'p'}", "--config.data.workers=1", "--quiet"]
  cwd = os.path.dirname(os.path.dirname(__file__))
  paused = tmp_path / "paused"
  proc = subprocess.Popen([sys.executable, "-c", _PAUSING_PREPARE, *flags],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          env=dict(os.environ, PAUSE_AT="15", PAUSED=str(paused)))
  while not paused.exists() and proc.poll() is None:
    time.sleep(0.05)
  assert paused.exists(), proc.stderr.read()[-3000:]
  (building,) = os.listdir(tmp_path / "p")
  written = [f for _, _, files in os.walk(tmp_path / "p" / building) for f in files]
  assert ".tmp-" in building and any(".array_record" in f for f in written), written
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  left = os.listdir(tmp_path / "p")
  assert left and all(".tmp-" in d for d in left)           # only a temporary build remains
  assert not any(prep.is_complete(str(tmp_path / "p" / d)) for d in left)
  r = subprocess.run([sys.executable, "-m", "jaxaudio.prepare", *flags], capture_output=True,
                     text=True, cwd=cwd)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["built"] and prep.is_complete(out["prepared"])
  assert os.listdir(tmp_path / "p") == [os.path.basename(out["prepared"])]   # stale one gone
