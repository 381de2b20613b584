"""What a run reports on its validation split while it trains: the selection score, per-class
metrics, example windows and log-mel images for TensorBoard."""

from __future__ import annotations
from typing import Any
import numpy as np
from jaxaudio.models import outputs
from jaxaudio.runtime import hosts
from jaxaudio.evaluation import report
from jaxaudio.evaluation.metrics import ConfusionMatrix, MultiLabelScores


def score_name(cfg, multi_label: bool) -> str:
  """The validation score a run maximises (train.best_metric; auto: macro-F1, or mAP for
  multi-label data)."""
  if cfg.train.best_metric != "auto":
    return cfg.train.best_metric
  return "mAP" if multi_label else "macro_f1"


def _scores(pred: dict[str, np.ndarray], num_classes: int, multi_label: bool) -> dict[str, Any]:
  if multi_label:
    return MultiLabelScores.from_model_output(logits=pred["logits"], labels=pred["label"]).compute()
  return ConfusionMatrix.empty(num_classes).merge(ConfusionMatrix.from_model_output(
      logits=pred["logits"], labels=pred["label"])).compute()


def _example_windows(prepared, split: str, count: int, scan: int = 2000) -> list[int]:
  """Indices of up to `count` windows of `split` with distinct labels (first found), for
  the log-mel images written at each evaluation."""
  source = prepared.data_source(split)
  chosen, seen = [], set()
  for i in range(min(len(source), scan)):
    label = np.asarray(source[i]["label"]).tobytes()
    if label not in seen:
      seen.add(label)
      chosen.append(i)
    if len(chosen) == count:
      break
  return chosen


def _label_text(label, classes: list[str]) -> str:
  label = np.asarray(label)
  if label.ndim == 0:
    return classes[int(label)]
  return "+".join(classes[i] for i in np.flatnonzero(label)) or "(none)"


def _logmel_images(prepared, indices: list[int], pred: dict[str, np.ndarray], classes,
                   multi_label: bool, step: int) -> np.ndarray:
  source = prepared.data_source("validation")
  mels, titles = [], []
  for i in indices:
    logits = pred["logits"][i].astype(np.float64)
    probs = outputs.probabilities(logits, multi_label)
    top = int(np.argmax(probs))
    mels.append(np.asarray(source[i]["mel"], np.float32))
    titles.append(f"true {_label_text(source[i]['label'], classes)}\n"
                  f"predicted {classes[top]} ({probs[top]:.2f})")
  fig = report.logmel_figure(mels, titles, f"validation windows, step {step}")
  return report.figure_to_array(fig)[None]


class Validation:
  """What a validation reports: the scores and the loss to TensorBoard, a confusion matrix and
  a few log-mels titled with their predictions as images; the configured score back to the
  fit loop."""

  def __init__(self, cfg, prepared, writer):
    self.classes, self.multi_label = prepared.classes, prepared.multi_label
    self.name = score_name(cfg, self.multi_label)
    self.prepared, self.writer = prepared, writer
    self.image_windows = _example_windows(prepared, "validation", int(cfg.train.logmel_images))

  def __call__(self, step: int, pred: dict[str, np.ndarray]) -> float:
    classes, multi_label = self.classes, self.multi_label
    scores = _scores(pred, len(classes), multi_label)
    scalars = {f"eval_{k}": float(v) for k, v in scores.items() if np.ndim(v) == 0}
    scalars["eval_loss"] = float(np.mean(pred["loss"]))
    self.writer.write_scalars(step, scalars)
    if hosts.is_primary():   # figures are drawn once
      images = {}
      if not multi_label:
        fig = report.confusion_figure(np.asarray(ConfusionMatrix.empty(len(classes)).merge(
            ConfusionMatrix.from_model_output(logits=pred["logits"], labels=pred["label"])
        ).matrix), classes, f"validation, step {step}")
        images["eval_confusion_matrix"] = report.figure_to_array(fig)[None]
      if self.image_windows:
        images["eval_logmel"] = _logmel_images(self.prepared, self.image_windows, pred, classes,
                                               multi_label, step)
      if images:
        self.writer.write_images(step, images)
    return float(scores[self.name])
