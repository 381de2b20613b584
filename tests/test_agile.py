"""Labels from search, `learn`, `rank`, `detect` and the labels' export (jaxaudio.search's
agile-modelling loop), on synthetic archives whose ground truth is known by construction."""

import csv
import json
import math
import os
import subprocess
import sys

import faiss
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from jaxaudio.runtime.errors import JaxAudioError
from jaxaudio.search import agile, learn, store
from jaxaudio.search.labels import Label, LabelError, LabelStore
from test_sweep import postgres  # noqa: F401  (the throwaway PostgreSQL server fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW, HOP = 1.0, 0.5
IDENTITY = {"model": "synthetic", "weights_sha256": "ab" * 32, "embedding_dim": 32}


def synthetic_index(path, files=12, windows=80, dim=32, seed=0, events_per_file=3,
                    identity=IDENTITY):
  """An index folder of `files` recordings of `windows` windows (1 s, hop 0.5 s): background
  embeddings around one direction, windows of a 'bird' event around another. Returns
  {path: [(start, end) of each event]} (each event 2 s = 3 windows)."""
  rng = np.random.default_rng(seed)
  bg, bird = rng.standard_normal(dim), rng.standard_normal(dim)
  emb, off, entries, truth = [], [], [], {}
  for i in range(files):
    name = f"/archive/site{i % 3}/rec{i:02d}.wav"
    x = bg + 1.2 * rng.standard_normal((windows, dim))
    starts = rng.choice(np.arange(2, windows - 6, 8), events_per_file, replace=False)
    truth[name] = []
    for s in sorted(starts):
      x[s:s + 3] = bird + 1.2 * rng.standard_normal((3, dim))
      truth[name].append((s * HOP, s * HOP + 2.0))
    emb.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    off.append(np.arange(windows) * HOP)
    entries.append(store.Entry(name, 1000, 1, "seg-000001", i * windows, windows,
                               (windows - 1) * HOP + WINDOW))
  os.makedirs(path, exist_ok=True)
  store.write_segment(path, "seg-000001", np.concatenate(emb), np.concatenate(off))
  frontend = {"frames_per_window": 100, "hop_length": 160, "sample_rate": 16000,
              "fmax": 8000.0}
  store.write_manifest(path, store.Manifest(
      model={**identity, "frontend": frontend, "settings": {"window_hop": 0.5}},
      segments={"seg-000001": files * windows}, files=entries, generation=1))
  return truth


def _truth_of_rows(archive, truth):
  out = np.zeros(len(archive.offsets), bool)
  rows = archive.file_rows()
  for path, spans in truth.items():
    lo, hi = rows[path]
    for s, e in spans:
      out[lo:hi] |= (archive.offsets[lo:hi] >= s - 1e-6) & (archive.offsets[lo:hi] + WINDOW
                                                            <= e + 1e-6)
  return out


def test_best_threshold_maximises_f1_as_sklearn_counts_it():
  rng = np.random.default_rng(1)
  truth = rng.random(400) < 0.3
  scores = np.clip(truth * 0.3 + rng.random(400) * 0.7, 0, 1)
  cut, precision, recall = learn.best_threshold(scores, truth)
  p, r, t = precision_recall_curve(truth, scores)
  f1 = 2 * p * r / np.maximum(p + r, 1e-12)
  best = int(np.argmax(f1[:-1]))
  assert precision == pytest.approx(p[best]) and recall == pytest.approx(r[best])
  pred = scores >= cut
  assert pred.sum() == (scores >= t[best]).sum()


def test_learn_rank_and_detect_recover_the_planted_events(tmp_path):
  index = str(tmp_path / "index")
  truth = synthetic_index(index)
  archive = learn.open_archive(index)
  files = sorted(truth)
  db = LabelStore(index)
  db.add([Label(files[0], *truth[files[0]][0], "bird", True),
          Label(files[1], *truth[files[1]][1], "bird", True),
          Label(files[2], 10.0, 12.0, "bird", False),
          Label(files[3], *truth[files[3]][2], "bird", True)], archive.durations)
  (clf,) = learn.learn(index, ["bird"], db.all())
  db.close()
  assert os.path.isfile(os.path.join(index, "classifiers", "bird.json"))
  assert clf.stats["positive_windows"] >= 6 and clf.stats["labels"] == {"positive": 3,
                                                                       "negative": 1}
  # Average precision over the whole archive against the planted events.
  gt = _truth_of_rows(archive, truth)
  scores = clf.scores(archive.embeddings)
  assert average_precision_score(gt, scores) > 0.9
  # rank top: the best unlabelled windows are planted events, none overlaps a label or
  # another proposal; margin: near the threshold.
  db = LabelStore(index)
  labels = db.all(["bird"])
  db.close()
  top = learn.rank(archive, clf, labels, 10, "top")
  assert len(top) == 10
  rows = archive.file_rows()
  for p in top:
    assert not any(lab.file == p.file and p.offset < lab.end and lab.start < p.end
                   for lab in labels)
    lo, _ = rows[p.file]
    assert gt[lo + int(round(p.offset / HOP))], p
  for a in top:
    for b in top:
      if a is not b and a.file == b.file:
        assert abs(a.offset - b.offset) >= WINDOW
  margin = learn.rank(archive, clf, labels, 10, "margin")
  assert np.median([abs(p.score - clf.threshold) for p in margin]) < np.median(
      [abs(p.score - clf.threshold) for p in top])
  mixed = learn.rank(archive, clf, labels, 6, "mixed")
  assert {(p.file, p.offset) for p in mixed[::2]} <= {(p.file, p.offset) for p in top}
  # detect at 0.5 (the cross-validated threshold rests on one negative label here): events
  # against the planted ones (each found, few false ones), merged across hops.
  found = learn.detect(archive, clf, 0.5)
  events = [(pred.file, ev) for pred in found for ev in pred.events]
  planted = [(f, s, e) for f, spans in truth.items() for s, e in spans]
  hits = sum(any(f == ef and ev.start < e and s < ev.end for ef, ev in events)
             for f, s, e in planted)
  assert hits / len(planted) >= 0.9
  false = sum(not any(f == ef and ev.start < e and s < ev.end for f, s, e in planted)
              for ef, ev in events)
  assert false <= 0.2 * len(events)


def test_classifier_of_another_model_is_refused(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  truth = synthetic_index(a)
  synthetic_index(b, identity={**IDENTITY, "weights_sha256": "cd" * 32})
  f = sorted(truth)[0]
  db = LabelStore(a)
  agile.label_span(learn.open_archive(a), db, f, *truth[f][0], "bird", True)
  learn.learn(a, ["bird"], db.all())
  os.makedirs(os.path.join(b, "classifiers"))
  os.replace(os.path.join(a, "classifiers", "bird.json"),
             os.path.join(b, "classifiers", "bird.json"))
  with pytest.raises(learn.ClassifierError, match="trained on embeddings of synthetic"):
    agile.ranking(b, LabelStore(b), "bird", 5, "top")


@pytest.mark.parametrize("args,words", [
    (("/archive/site0/rec00.wav", 39.0, 45.0, "bird"), "past the file's end"),
    (("/archive/nope.wav", 1.0, 2.0, "bird"), "is not in the index"),
    (("/archive/site0/rec00.wav", 1.0, 2.0, " "), "is not a class name"),
    (("/archive/site0/rec00.wav", 3.0, 2.0, "bird"), "is not a span"),
    (("/archive/site0/rec00.wav", 1.0, math.inf, "bird"), "is not a span"),
])
def test_bad_labels_are_one_sentence_and_store_nothing(tmp_path, args, words):
  index = str(tmp_path / "index")
  synthetic_index(index)
  with pytest.raises(LabelError, match=words):
    agile.label_span(learn.open_archive(index), LabelStore(index), *args, positive=True)
  assert LabelStore(index).all() == []


def test_learn_refuses_a_class_without_positives(tmp_path):
  index = str(tmp_path / "index")
  truth = synthetic_index(index)
  f = sorted(truth)[0]
  db = LabelStore(index)
  with pytest.raises(LabelError, match="'bird' has no positive label;"):
    learn.learn(index, ["bird"], db.all())
  agile.label_span(learn.open_archive(index), db, f, 0.0, 1.0, "bird", False)
  with pytest.raises(LabelError, match=r"no positive label \(only negatives\)"):
    learn.learn(index, ["bird"], db.all())
  assert not os.path.exists(os.path.join(index, "classifiers"))


def test_ranking_labels_by_rank_and_the_export_is_a_training_csv(tmp_path):
  index = str(tmp_path / "index")
  truth = synthetic_index(index)
  archive = learn.open_archive(index)
  f = sorted(truth)[0]
  db = LabelStore(index)
  agile.label_span(archive, db, f, *truth[f][0], "bird", True)
  learn.learn(index, ["bird"], db.all(), archive=archive)
  ranking = agile.ranking(index, db, "bird", 5, "top", archive)
  path = tmp_path / "ranking.json"
  path.write_text(json.dumps(ranking))
  stored = agile.label_ranking(archive, db, str(path), ["1", "3"], ["rest"], None)
  assert [lab.positive for lab in stored] == [True, False, True, False, False]
  assert {lab.source for lab in stored} == {"rank bird top"}
  with pytest.raises(LabelError, match="is not a rank"):
    agile.label_ranking(archive, db, str(path), ["9"], [], None)
  with pytest.raises(LabelError, match="both accepted and rejected"):
    agile.label_ranking(archive, db, str(path), ["1"], ["1"], None)
  out = str(tmp_path / "labels.csv")
  counts, written = agile.list_labels(index, db, out)
  assert counts == {"bird": {"positive": 3, "negative": 3}} and written == out
  rows = list(csv.DictReader(open(out)))
  assert len(rows) == 6 and set(rows[0]) == set(agile.EXPORT_COLUMNS)
  assert sum(r["label"] == "bird" for r in rows) == 3
  assert sum(r["negatives"] == "bird" and r["label"] == "" for r in rows) == 3
  assert all(r["group"] == r["path"] for r in rows)


_WRITER = """
import sys
from jaxaudio.search.labels import Label, LabelStore
db = LabelStore(sys.argv[1])
for i in range(int(sys.argv[3])):
  db.add([Label(f"/archive/f{sys.argv[2]}.wav", float(i), i + 0.5, "bird", i % 2 == 0)])
print("done")
"""


def _two_writers(where, n=150):
  procs = [subprocess.Popen([sys.executable, "-c", _WRITER, where, str(w), str(n)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for w in (1, 2)]
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "done" in out, err[-2000:]
  labels = LabelStore(where).all()
  assert len(labels) == 2 * n
  assert {lab.file for lab in labels} == {"/archive/f1.wav", "/archive/f2.wav"}


def test_two_processes_labelling_at_once_lose_nothing_on_sqlite(tmp_path):
  _two_writers(str(tmp_path))


def test_two_processes_labelling_at_once_lose_nothing_on_postgresql(postgres):
  _two_writers(postgres)
  # the same span labelled again replaces its verdict (an upsert), on PostgreSQL too
  db = LabelStore(postgres)
  db.add([Label("/archive/f1.wav", 0.0, 0.5, "bird", False)])
  assert [lab.positive for lab in db.all() if lab.file == "/archive/f1.wav"
          and lab.start == 0.0] == [False]


def test_hybrid_proposes_the_positives_neighbours_then_hands_over_to_top(tmp_path, monkeypatch):
  index = str(tmp_path / "index")
  truth = synthetic_index(index)
  archive = learn.open_archive(index)
  files = sorted(truth)
  labels = [Label(files[0], *truth[files[0]][0], "bird", True),
            Label(files[2], 10.0, 11.0, "bird", False)]
  (clf,) = learn.learn(index, ["bird"], labels, archive=archive)
  hybrid = learn.rank(archive, clf, labels, 8, "hybrid")
  top = learn.rank(archive, clf, labels, 8, "top")
  # Fewer than HYBRID_POSITIVES positives: search's proposals, against faiss's exact inner
  # product search with the labelled positive windows as queries.
  rows = archive.file_rows()
  lo, hi = rows[files[0]]
  start, end = truth[files[0]][0]
  positive = lo + np.flatnonzero((archive.offsets[lo:hi] < end - WINDOW / 2)
                                 & (archive.offsets[lo:hi] + WINDOW > start + WINDOW / 2))
  exact = faiss.IndexFlatIP(archive.embeddings.shape[1])
  exact.add(archive.embeddings)
  sims, ids = exact.search(archive.embeddings[positive], len(archive.offsets))
  best = np.full(len(archive.offsets), -np.inf, np.float32)
  for s, i in zip(sims, ids):
    best[i] = np.maximum(best[i], s)
  np.testing.assert_allclose(learn.similarity(archive.embeddings, positive), best, atol=1e-5)
  row_of = {(archive.files[int(archive.file_of_row[r])].path, float(archive.offsets[r])): r
            for r in range(len(archive.offsets))}
  got = [row_of[(p.file, p.offset)] for p in hybrid]
  free = [r for r in np.argsort(-best, kind="stable") if not any(
      lab.file == archive.files[int(archive.file_of_row[r])].path
      and archive.offsets[r] < lab.end and lab.start < archive.offsets[r] + WINDOW
      for lab in labels)]
  assert got[0] == free[0]                             # the nearest unlabelled neighbour
  assert np.all(np.diff(best[got]) <= 1e-6)            # in the order of their similarity
  assert {p.score for p in hybrid} <= set(clf.scores(archive.embeddings)[got].tolist())
  gt = _truth_of_rows(archive, truth)
  assert gt[got].mean() >= 0.75                       # the neighbours of a bird are birds
  assert [(p.file, p.offset) for p in hybrid] != [(p.file, p.offset) for p in top]
  for p in hybrid:
    assert not any(lab.file == p.file and p.offset < lab.end and lab.start < p.end
                   for lab in labels)
  for a in hybrid:
    for b in hybrid:
      if a is not b and a.file == b.file:
        assert abs(a.offset - b.offset) >= WINDOW
  # With HYBRID_POSITIVES positive labels it is top.
  monkeypatch.setattr(learn, "HYBRID_POSITIVES", 1)
  assert learn.rank(archive, clf, labels, 8, "hybrid") == top
  with pytest.raises(JaxAudioError, match="is not one of top, margin, mixed, hybrid"):
    learn.rank(archive, clf, labels, 8, "best")


def test_a_one_window_label_is_one_positive_however_float32_rounds_its_neighbours():
  """With the hop half a window (aiSFX: 2.32 s, hop 1.16 s), a one-window label's neighbours
  overlap it by exactly half; stored as float32 an hour into a file, that tie used to fall
  either way and turn one label into 2-3 positives. Now it is one positive, and rank never
  proposes the label's window nor the half-heard neighbours."""
  window = 2.3219954648526078
  hop = window / 2
  n = 4000                                   # 77 minutes of windows
  offsets = (np.arange(n) * hop).astype(np.float32)
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((n, 8)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  entry = store.Entry("/a/long.wav", 1, 1, "seg-000001", 0, n, float(offsets[-1]) + window)
  archive = learn.Archive(emb, offsets, np.zeros(n, np.int32), [entry], window, hop, 8000.0,
                          IDENTITY)
  rows = rng.choice(np.arange(1, n - 1), 300, replace=False)
  labels = [Label(entry.path, float(offsets[r]), float(offsets[r]) + window, "bird", True)
            for r in rows]
  # the rounding really is there: some neighbours come out a hair over half, some under
  gaps = np.diff(offsets.astype(np.float64))
  assert (gaps < hop - 1e-7).any() and (gaps > hop + 1e-7).any()
  pos, _, spans = learn.targets(archive, labels, ["bird"])
  assert [list(s) for s in spans] == [[r] for r in rows]
  assert set(np.flatnonzero(pos[:, 0])) == set(rows)
  clf = learn.Classifier("bird", np.ones(8, np.float32), 0.0, 0.5, IDENTITY, {})
  proposed = {int(round(p.offset / hop)) for p in learn.rank(archive, clf, labels, 200)}
  assert len(proposed) == 200
  assert not proposed & (set(rows) | set(rows + 1) | set(rows - 1))
