"""`python -m jaxaudio.evaluate --folds=K`: K runs of the recipe, summarised independently."""

import json
import os

import numpy as np
import pytest


def test_cross_validation_trains_each_fold_once_and_summarises_them(trained, cli):
  from jaxaudio.workflows.crossval import cross_validate
  workdir, _ = trained
  summary = cross_validate(workdir, 2, bootstrap=0)
  folds = []
  for i in (1, 2):
    fold_dir = os.path.join(workdir, "cv", f"fold_{i}")
    cfg = json.load(open(os.path.join(fold_dir, "config.json")))
    assert (cfg["data"]["cv_folds"], cfg["data"]["cv_fold"]) == (2, i)
    folds.append(json.load(open(os.path.join(fold_dir, "report", "evaluation.json"))))
  # 30 clips of 3 classes: the two test folds are disjoint and cover every clip.
  assert sum(f["classification"]["num_examples"] for f in folds) == 30
  for key in ("accuracy", "macro_f1", "ece"):
    values = [f["classification"][key] for f in folds]
    assert summary["classification"][key]["folds"] == values
    assert summary["classification"][key]["mean"] == pytest.approx(np.mean(values))
    assert summary["classification"][key]["std"] == pytest.approx(np.std(values, ddof=1))
  out = os.path.join(workdir, "report")
  assert "| accuracy |" in open(os.path.join(out, "cross_validation.md")).read()
  assert os.path.getsize(os.path.join(out, "cross_validation.png")) > 1000
  # Complete folds are not trained again: the CLI only re-evaluates them.
  stamp = os.path.getmtime(os.path.join(workdir, "cv", "fold_1", "labels.json"))
  r = cli("jaxaudio.evaluate", f"--workdir={workdir}", "--folds=2", "--bootstrap=0")
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"accuracy: {summary['classification']['accuracy']['mean']:.4f}" in r.stdout
  assert os.path.getmtime(os.path.join(workdir, "cv", "fold_1", "labels.json")) == stamp
  r = cli("jaxaudio.evaluate", f"--workdir={workdir}", "--folds=1")
  assert r.returncode == 2 and "use 2 or more folds" in r.stderr


def test_multi_label_folds_report_map_and_early_stopped_folds_are_not_trained_again(
    multilabel_trained, cli):
  workdir, _ = multilabel_trained
  r = cli("jaxaudio.evaluate", f"--workdir={workdir}", "--folds=2", "--bootstrap=0")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "mAP:" in r.stdout and "accuracy" not in r.stdout
  assert "fold 1/2: mAP" in r.stderr
  for i in (1, 2):   # each fold stopped early, long before its 40 steps
    ckpts = os.listdir(os.path.join(workdir, "cv", f"fold_{i}", "checkpoints"))
    assert max(int(c) for c in ckpts if c.isdigit()) == 10
  stamps = [os.path.getmtime(os.path.join(workdir, "cv", f"fold_{i}", "labels.json"))
            for i in (1, 2)]
  r = cli("jaxaudio.evaluate", f"--workdir={workdir}", "--folds=2", "--bootstrap=0")
  assert r.returncode == 0 and "training in" not in r.stderr, r.stderr[-2000:]
  assert [os.path.getmtime(os.path.join(workdir, "cv", f"fold_{i}", "labels.json"))
          for i in (1, 2)] == stamps
