"""`python -m jaxaudio.select`: ranking pretrained models on train + validation clips only."""

import glob
import json
import os

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score

from jaxaudio.runs import configs
from jaxaudio.train import probe
from jaxaudio.workflows import model_selection
from jaxaudio.runtime.errors import ConfigError, DataError, UnknownModelError
from datafixtures import write_class_folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  return write_class_folder(str(tmp_path_factory.mktemp("select") / "clips"), per_class=8,
                            seconds=3.2)


def test_select_ranks_models_on_folds_of_train_and_validation(cli, clips, tmp_path,
                                                              aisfx_checkpoint,
                                                              musicnn_checkpoint):
  del aisfx_checkpoint
  musicnn_checkpoint("MTT_musicnn")
  work = tmp_path / "select"
  r = cli("jaxaudio.select", "--config=configs/finetune.py",
          f"--config.data.source=folder:{clips}",
          f"--config.data.prepared_dir={tmp_path / 'prepared'}", "--config.data.workers=1",
          "--models=aisfx,musicnn_mtt", "--folds=3", "--probe_steps=100", f"--workdir={work}",
          timeout=600)
  assert r.returncode == 0, r.stderr
  assert "Recommended:" in r.stdout and "model 2/2: musicnn_mtt" in r.stderr
  result = json.load(open(work / "report" / "select.json"))
  rows = {row["name"]: row for row in result["models"]}
  assert set(rows) == {"aisfx", "musicnn_mtt"} and result["metric"] == "macro_f1"
  assert result["recommended"] == max(rows, key=lambda n: rows[n]["macro_f1"])
  assert not result["test_split_used"]
  prepared = json.load(open(glob.glob(str(tmp_path / "prepared" / "*" / "meta.json"))[0]))
  pool = sum(prepared["splits"][s]["clips"] for s in ("train", "validation"))
  for row in rows.values():
    assert sum(f["clips"] for f in row["folds"]) == pool   # every pool clip once, no test clip
    for key in ("accuracy", "macro_f1", "mAP"):
      values = [f[key] for f in row["folds"]]
      assert row[key] == pytest.approx(np.mean(values))
      assert row[key + "_std"] == pytest.approx(np.std(values, ddof=1))
    assert row["windows_per_second"] > 0 and row["params"] > 0
  assert rows["musicnn_mtt"]["embedding_dim"] == 200 and rows["aisfx"]["embedding_dim"] == 512
  assert f"--config.model.name={result['recommended']}" in result["command"]
  assert result["command"].startswith("python -m jaxaudio.main --config=configs/finetune.py")
  assert os.path.isfile(work / "report" / "select.png")
  assert os.path.isfile(work / "report" / "select.md")
  # Ungrouped folds: the report and the console carry the caution and name data.group.
  assert not result["grouped"] and "caution: the folds deal clips at random" in r.stderr
  assert "**Caution:** the folds deal clips" in open(work / "report" / "select.md").read()
  assert glob.glob(str(work / "tensorboard" / "events.out.tfevents.*"))
  bad = cli("jaxaudio.select", f"--config.data.source=folder:{clips}", "--models=aisfx,musicn",
            f"--workdir={tmp_path / 'bad'}")
  assert bad.returncode == 2 and "did you mean 'musicnn_" in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1


def test_clip_scores_match_sklearn():
  rng = np.random.default_rng(0)
  keys = np.repeat(np.arange(40), 3).astype(str)
  truth = rng.integers(0, 4, 40)
  logits = rng.normal(size=(120, 4)) + 1.5 * np.eye(4)[np.repeat(truth, 3)]
  got = model_selection._clip_scores(logits, np.repeat(truth, 3), keys, 4, False)  # pylint: disable=protected-access
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  order = np.unique(keys)
  pred = np.array([probs[keys == k].mean(0).argmax() for k in order])
  want = np.array([truth[int(k)] for k in order])
  assert got["accuracy"] == pytest.approx(accuracy_score(want, pred))
  assert got["macro_f1"] == pytest.approx(f1_score(want, pred, average="macro"))


def test_probe_converges_on_well_separated_embeddings():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 3, 300)
  x = rng.normal(size=(300, 16)) + 4.0 * np.eye(3, 16)[y]
  train = configs.base_config().train
  x = (x - x[:200].mean(0)) / x[:200].std(0)
  predict = probe.fit_probe(x[:200], y[:200], 3, False, train, steps=300, seed=0)
  assert (predict(x[200:]).argmax(1) == y[200:]).mean() >= 0.97


def test_paired_comparison_over_folds():
  a, b = [0.90, 0.91, 0.93, 0.92, 0.90], [0.50, 0.52, 0.49, 0.55, 0.51]
  p = model_selection.paired(a, b)
  d = np.subtract(a, b)
  t = d.mean() / (d.std(ddof=1) / np.sqrt(5))
  assert p["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 4))
  assert not p["within_noise"] and p["ci95"][0] > 0
  noisy = model_selection.paired([0.9, 0.5, 0.7, 0.8, 0.6], [0.6, 0.8, 0.7, 0.7, 0.65])
  assert noisy["within_noise"] and noisy["ci95"][0] < 0 < noisy["ci95"][1]


def test_bad_candidates_and_too_few_clips(clips):
  with pytest.raises(UnknownModelError, match="unknown model 'vgg'"):
    model_selection.parse_candidates("aisfx,vgg")
  with pytest.raises(ConfigError, match="needs its official checkpoint: write panns_cnn14:PATH"):
    model_selection.parse_candidates("panns_cnn14")
  with pytest.raises(ConfigError, match="no such checkpoint"):
    model_selection.parse_candidates("panns_cnn10:/nonexistent/Cnn10.pth")
  cfg = configs.base_config()
  cfg.data.source = f"folder:{clips}"
  with pytest.raises(DataError, match=r"fewer than the 9 folds; use --folds="):
    model_selection.pool_folds(cfg, 9)


def test_folds_keep_groups_whole(clips):
  cfg = configs.base_config()
  cfg.data.source = f"folder:{clips}"
  cfg.data.group = r"regex:_(\d+)\.wav$"    # clip i of every class: one "speaker"
  fold_of, grouped = model_selection.pool_folds(cfg, 3)
  assert grouped
  by_group = {}
  for key, fold in fold_of.items():
    by_group.setdefault(key.rsplit("_", 1)[1], set()).add(fold)
  assert all(len(folds) == 1 for folds in by_group.values())
  assert sorted({f for fs in by_group.values() for f in fs}) == [1, 2, 3]


def test_multilabel_clip_scores_match_sklearn():
  rng = np.random.default_rng(2)
  keys = np.repeat(np.arange(30), 2).astype(str)
  truth = (rng.random((30, 4)) < 0.4).astype(np.uint8)
  logits = rng.normal(size=(60, 4)) + 2.0 * (np.repeat(truth, 2, axis=0) - 0.5)
  got = model_selection._clip_scores(logits, np.repeat(truth, 2, axis=0), keys, 4, True)  # pylint: disable=protected-access
  probs = 1 / (1 + np.exp(-logits))
  order = np.unique(keys)
  pred = np.stack([probs[keys == k].mean(0) for k in order]) >= 0.5
  want = truth[[int(k) for k in order]]
  assert got["macro_f1"] == pytest.approx(f1_score(want, pred, average="macro", zero_division=0))
  assert got["micro_f1"] == pytest.approx(f1_score(want, pred, average="micro"))
  assert "accuracy" not in got
