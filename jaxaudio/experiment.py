"""A run: prepare the data, fit, report on the test split, evaluate the best checkpoint.

`python -m jaxaudio.main` calls run(); cross-validation folds are runs. Every process of a
multi-host job calls it; process 0 writes config.json, labels.json, TensorBoard and reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
from clu import periodic_actions

from jaxaudio import configs, forward, hosts, inference
from jaxaudio.data.prepare import prepare
from jaxaudio.evaluate import report
from jaxaudio.evaluate.evaluation import evaluate_run
from jaxaudio.evaluate.metrics import ConfusionMatrix, MultiLabelScores
from jaxaudio.models.registry import get_model
from jaxaudio.train.fit import fit

log = logging.getLogger("jaxaudio")


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
    probs = inference.probabilities(logits, multi_label)
    top = int(np.argmax(probs))
    mels.append(np.asarray(source[i]["mel"], np.float32))
    titles.append(f"true {_label_text(source[i]['label'], classes)}\n"
                  f"predicted {classes[top]} ({probs[top]:.2f})")
  fig = report.logmel_figure(mels, titles, f"validation windows, step {step}")
  return report.figure_to_array(fig)[None]


class _Validation:
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


def headline(cls: dict) -> str:
  """One console line of a test evaluation: accuracy (mAP for multi-label runs), its 95%
  interval when bootstrapped, and ECE for single-label runs."""
  key = "accuracy" if "accuracy" in cls else "mAP"
  line = f"test {key} {cls[key]:.4f}"
  if f"{key}_ci95" in cls:
    lo, hi = cls[f"{key}_ci95"]
    line += f" (95% interval {lo:.4f}-{hi:.4f})"
  if cls.get("ece") is not None:
    line += f", ECE {cls['ece']:.4f}"
  return line


def run(cfg, workdir: str, on_validation=None, embeddings_dir: str | None = None,
        with_test: bool = True) -> dict[str, Any]:
  """Run (or continue) the configured fine-tuning in `workdir`; returns the test report.

  A sweep trial passes `on_validation(step, score)` (its pruner), `embeddings_dir` (the
  sweep's shared probe embeddings) and with_test=False: a trial never scores the test split;
  what it returns then holds the validation score and the steps trained."""
  configs.validate(cfg)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  info = get_model(cfg.model.name)
  prepared, _ = prepare(cfg.data, info.spec, progress=hosts.is_primary())
  if not int(cfg.train.num_steps):   # epochs of fine-tuning, after the probe
    cfg.train.num_steps = int(cfg.train.probe_steps) + max(1, math.ceil(
        float(cfg.train.epochs) * prepared.num_windows("train") / int(cfg.train.batch_size)))
    log.info("train.epochs=%g over %d training windows: %d steps (probe %d)",
             float(cfg.train.epochs), prepared.num_windows("train"), cfg.train.num_steps,
             int(cfg.train.probe_steps))
  classes, multi_label = prepared.classes, prepared.multi_label
  if hosts.is_primary():
    # What a saved model is rebuilt from, and the label map its logits index into.
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2, sort_keys=True))
    with open(os.path.join(workdir, "labels.json"), "w") as f:
      json.dump({"classes": classes, "multi_label": multi_label, "model": cfg.model.name}, f,
                indent=2)
  begin = time.perf_counter()
  writer = report.summary_writer(workdir)
  progress = periodic_actions.ReportProgress(num_train_steps=int(cfg.train.num_steps),
                                             writer=writer, every_secs=60)
  validation = _Validation(cfg, prepared, writer)
  fitted = fit(cfg, workdir, info, prepared, validation, writer, hooks=(progress,),
               on_validation=on_validation, embeddings_dir=embeddings_dir)
  if not with_test:
    writer.flush()
    return {"best_step": fitted.best_step, "last_step": fitted.last_step,
            "validation_score": {validation.name: fitted.best_score},
            "train_seconds": time.perf_counter() - begin}
  test = report.classification_report(forward.clip_level(fitted.predict("test"), multi_label),
                                      classes, multi_label)
  test.update(best_step=fitted.best_step, validation_score={validation.name: fitted.best_score},
              train_seconds=time.perf_counter() - begin)
  if hosts.is_primary():
    report.write_test_report(workdir, test, classes)
    writer.write_scalars(fitted.last_step, {
        f"test_{k}": float(v) for k, v in test.items()
        if k in ("accuracy", "macro_f1", "mAP", "micro_f1")})
  writer.flush()
  ev = cfg.get("evaluate") or {}
  if ev.get("at_end", False):   # every process: the restore and the gathers are collective
    log.info("evaluating the best checkpoint (step %d) on the test split", fitted.best_step)
    result = evaluate_run(workdir, "test", fitted.best_step, bool(ev.get("retrieval")),
                          bool(ev.get("robustness")), int(ev.get("bootstrap", 1000)),
                          int(cfg.train.batch_size))
    log.info("%s; report: %s", headline(result["classification"]),
             os.path.join(workdir, "report", "evaluation.md"))
  return test
