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

from clu import periodic_actions

from jaxaudio.runs import configs
from jaxaudio.train import forward
from jaxaudio.runtime import hosts
from jaxaudio.data.prepare import prepare
from jaxaudio.evaluation import report
from jaxaudio.evaluation.heldout import evaluate_run
from jaxaudio.models.registry import get_model
from jaxaudio.train.fit import fit
from jaxaudio.evaluation.validation import Validation

log = logging.getLogger("jaxaudio")


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
  validation = Validation(cfg, prepared, writer)
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
