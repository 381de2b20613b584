"""Metrics against sklearn on small random cases, including absent classes and masks."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxaudio.evaluation import metrics


@pytest.mark.parametrize("seed", range(5))
def test_single_label_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  c = 5
  labels = rng.integers(0, c - 1, 60)           # class 4 never true: sklearn zero_division
  logits = rng.normal(size=(60, c))
  logits[np.arange(60), labels] += rng.uniform(0, 2, 60)
  mask = (rng.random(60) > 0.2).astype(np.float32)
  a = metrics.ConfusionMatrix.from_model_output(logits=logits[:25], labels=labels[:25],
                                                mask=mask[:25])
  b = metrics.ConfusionMatrix.from_model_output(logits=logits[25:], labels=labels[25:],
                                                mask=mask[25:])
  got = a.merge(b).compute()
  keep = mask > 0
  y, p = labels[keep], logits[keep].argmax(-1)
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
  for name in ("precision", "recall", "f1"):
    ref = getattr(skm, f"{name}_score")(y, p, average="macro", zero_division=0)
    assert got[f"macro_{name}"] == pytest.approx(ref), name
  ref = skm.precision_recall_fscore_support(y, p, labels=range(c), zero_division=0)
  for i, name in enumerate(("precision", "recall", "f1", "support")):
    np.testing.assert_allclose(got[name], ref[i])
  assert got["num_examples"] == keep.sum()


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  targets = (rng.random((50, 6)) < 0.3).astype(np.float32)
  targets[:, 5] = 0                              # a class without positives is skipped
  logits = rng.normal(size=(50, 6)) + 1.5 * targets
  logits[:10, 0] = logits[10:20, 0] = 0.25       # ties
  got = metrics.MultiLabelScores.from_model_output(logits=logits, labels=targets).compute()
  ref_ap = [skm.average_precision_score(targets[:, j], logits[:, j]) for j in range(5)]
  assert got["mAP"] == pytest.approx(np.mean(ref_ap))
  np.testing.assert_allclose(got["average_precision"][:5], ref_ap)
  assert got["micro_f1"] == pytest.approx(skm.f1_score(targets, logits >= 0, average="micro"))
  # macro-F1 over every class, the one without positives counting 0 (sklearn zero_division=0)
  assert got["macro_f1"] == pytest.approx(skm.f1_score(targets, logits >= 0, average="macro",
                                                       zero_division=0))
  np.testing.assert_allclose(got["f1"], skm.f1_score(targets, logits >= 0, average=None,
                                                     zero_division=0))
