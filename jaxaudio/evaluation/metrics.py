"""Classification metrics as clu metrics, with sklearn's definitions.

Single-label: a confusion matrix accumulates over batches (masked rows excluded); accuracy,
macro precision / recall / F1 and per-class figures follow sklearn's zero_division=0.
Multi-label: scores and targets are collected; mAP is sklearn's macro average precision
over classes with at least one positive, micro-F1 thresholds sigmoid outputs at 0.5.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import numpy as np
from clu import metrics as clu_metrics
from sklearn.metrics import average_precision_score

from jaxaudio.models import outputs


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def scores_from_confusion(cm: np.ndarray) -> dict[str, Any]:
  """cm[true, predicted] -> accuracy, macro P/R/F1 and per-class arrays (sklearn semantics:
  classes are those with support or predictions; undefined ratios count as 0)."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  support, predicted = cm.sum(1), cm.sum(0)
  precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
  f1 = _safe_div(2 * precision * recall, precision + recall)
  present = (support + predicted) > 0
  total = cm.sum()
  return {"accuracy": float(tp.sum() / total) if total else 0.0,
          "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
          "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
          "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
          "precision": precision, "recall": recall, "f1": f1, "support": support.astype(int),
          "num_examples": int(total)}


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Accumulated cm[true, predicted]; compute() gives the scores above."""

  matrix: np.ndarray

  @classmethod
  def empty(cls, num_classes: int) -> "ConfusionMatrix":
    return cls(matrix=np.zeros((num_classes, num_classes), np.int64))

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_) -> "ConfusionMatrix":
    logits, labels = np.asarray(logits), np.asarray(labels).astype(int)
    keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask) > 0
    c = logits.shape[-1]
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (labels[keep], np.argmax(logits[keep], -1)), 1)
    return cls(matrix=cm)

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self) -> dict[str, Any]:
    return scores_from_confusion(self.matrix)


def average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
  """scikit-learn's average precision of one class; NaN when it has no positive example
  (sklearn would warn and return a number that means nothing)."""
  targets = np.asarray(targets).astype(bool)
  if not targets.any():
    return float("nan")
  return float(average_precision_score(targets, scores))


def multilabel_scores(targets: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
  targets = np.asarray(targets) > 0.5
  scores = outputs.probabilities(logits, multi_label=True)
  per_class = np.array([average_precision(targets[:, j], scores[:, j])
                        for j in range(targets.shape[1])])
  pred = scores >= 0.5
  tp, fp, fn = (pred & targets).sum(0), (pred & ~targets).sum(0), (~pred & targets).sum(0)
  denom = 2 * tp + fp + fn
  micro = 2 * tp.sum() + fp.sum() + fn.sum()
  per_class_f1 = _safe_div(2 * tp, denom)   # sklearn's zero_division=0
  return {"mAP": float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0,
          "micro_f1": float(2 * tp.sum() / micro) if micro else 0.0,
          "macro_f1": float(per_class_f1.mean()) if len(per_class_f1) else 0.0,
          "f1": per_class_f1, "average_precision": per_class,
          "num_examples": int(len(targets))}


@flax.struct.dataclass
class MultiLabelScores(clu_metrics.Metric):
  """Collected targets and logits of a multi-label task; compute() gives mAP, micro- and
  macro-F1 (sigmoid at 0.5)."""

  targets: np.ndarray
  logits: np.ndarray

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_) -> "MultiLabelScores":
    keep = slice(None) if mask is None else np.asarray(mask) > 0
    return cls(targets=np.asarray(labels)[keep], logits=np.asarray(logits)[keep])

  def merge(self, other: "MultiLabelScores") -> "MultiLabelScores":
    return type(self)(targets=np.concatenate([self.targets, other.targets]),
                      logits=np.concatenate([self.logits, other.logits]))

  def compute(self) -> dict[str, Any]:
    return multilabel_scores(self.targets, self.logits)
