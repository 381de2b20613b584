"""ECE against sklearn's calibration_curve; bootstrap intervals behave like intervals, and the
vectorised bootstrap scores each resample as sklearn does."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from jaxaudio.models import outputs
from jaxaudio.evaluation import calibration


def test_ece_matches_sklearn_calibration_curve():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=2.0, size=(500, 6))
  labels = np.where(rng.random(500) < 0.6, logits.argmax(1), rng.integers(0, 6, 500))
  probs = outputs.probabilities(logits, multi_label=False)
  probs[0] = np.eye(6)[labels[0]]            # confidence exactly 1.0 lands in the top bin
  probs[1] = [0.4, 0.2, 0.2, 0.1, 0.1, 0.0]  # exactly on an inner edge (6/15)
  conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(int)
  prob_true, prob_pred = calibration_curve(correct, conf, n_bins=15, strategy="uniform")
  counts = np.bincount(np.searchsorted(np.linspace(0, 1, 16)[1:-1], conf), minlength=15)
  reference = np.sum(counts[counts > 0] / len(conf) * np.abs(prob_true - prob_pred))
  ours = calibration.expected_calibration_error(probs, labels, bins=15)
  assert ours["ece"] == pytest.approx(reference, abs=1e-12)
  assert ours["bin_count"].sum() == 500 and ours["ece"] > 0.05
  perfect = calibration.expected_calibration_error(np.eye(4)[[0, 1, 2, 3]], np.arange(4))
  assert perfect["ece"] == 0.0


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_more_clips():
  rng = np.random.default_rng(1)

  def width(n):
    truth = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.8, truth, (truth + 1) % 3)
    lo, hi = calibration.bootstrap_interval(lambda i: accuracy_score(truth[i], pred[i]), n,
                                            n=400, seed=0)
    assert lo <= accuracy_score(truth, pred) <= hi
    return hi - lo
  small, large = width(80), width(2000)
  assert 0.1 < small < 0.25 and large < small / 3


@pytest.mark.parametrize("n_items, classes", [(7, 5), (60, 4), (3000, 12)])
def test_vectorised_macro_f1_is_sklearns_on_every_resample(n_items, classes, monkeypatch):
  """Small sets leave classes out of a resample's truth or predictions (sklearn averages over
  the classes present in either); blocks of 7 resamples (the last one short) draw what 300
  single draws do."""
  monkeypatch.setattr(calibration, "_BLOCK_ELEMENTS", 7 * n_items)
  rng = np.random.default_rng(n_items)
  truth = rng.integers(0, classes, n_items)
  pred = np.where(rng.random(n_items) < 0.6, truth, rng.integers(0, classes, n_items))
  draws = np.random.default_rng(3).integers(0, n_items, (300, n_items))
  ours = calibration.macro_f1_of_resamples(truth, pred, draws, classes)
  want = [f1_score(truth[i], pred[i], average="macro", zero_division=0) for i in draws]
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-12)
  one_at_a_time = calibration.bootstrap_interval(
      lambda i: f1_score(truth[i], pred[i], average="macro", zero_division=0), n_items,
      n=300, seed=3)
  at_once = calibration.bootstrap_interval(
      lambda rows: calibration.macro_f1_of_resamples(truth, pred, rows, classes), n_items,
      n=300, seed=3, vectorized=True)
  assert at_once == pytest.approx(one_at_a_time, abs=1e-12)
  assert calibration.bootstrap_interval(lambda rows: np.mean(pred[rows] == truth[rows], 1),
                                        n_items, n=300, seed=3, vectorized=True) == \
      calibration.bootstrap_interval(lambda i: accuracy_score(truth[i], pred[i]), n_items,
                                     n=300, seed=3)


@pytest.mark.parametrize("n_items", [6, 40, 500])
def test_vectorised_map_is_sklearns_on_every_resample(n_items):
  """Per resample, sklearn's average precision of each class on the resampled clips (ties
  in score included: scores rounded to 0.1), averaged over the classes with a positive
  there (0 where none has one); small sets leave resamples without a positive of a class."""
  rng = np.random.default_rng(n_items)
  targets = rng.random((n_items, 4)) < [0.5, 0.3, 0.1, 0.05]
  scores = np.round(np.clip(0.3 * targets + 0.7 * rng.random((n_items, 4)), 0, 1), 1)
  draws = np.random.default_rng(5).integers(0, n_items, (300, n_items))
  ours = calibration.mean_average_precision_of_resamples(targets, scores, draws)

  def reference(i):
    aps = [average_precision_score(targets[i, j], scores[i, j]) for j in range(4)
           if targets[i, j].any()]
    return float(np.mean(aps)) if aps else 0.0
  want = [reference(i) for i in draws]
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-12)
  assert any(targets[:, j].any() and not targets[i, j].any() for i in draws
             for j in range(4)) == (n_items < 100)
  negatives = np.flatnonzero(~targets.any(1))      # a resample of clips with no label at all
  if len(negatives):
    none = calibration.mean_average_precision_of_resamples(
        targets, scores, np.resize(negatives, (2, n_items)))
    assert none.tolist() == [0.0, 0.0]
