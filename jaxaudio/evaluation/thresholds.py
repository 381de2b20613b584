"""Per-class decision thresholds chosen on a run's validation split (best F1 per class).

One global threshold is what makes a fine-tuned detector fire on every noise in a field
recording: classes differ in how confident the model is about them. For each class, the
threshold maximises that class's one-vs-rest F1 on the validation clips (scikit-learn's
precision_recall_curve over the clip-level probabilities the evaluation computes). Every
threshold between the lowest admitted probability and the next lower one decides the
validation clips alike; the midpoint of that gap is taken, not its edge, so a recording a
little less confident than the validation clips is still detected. A class with no
validation clip keeps 0.5. They are computed once
per checkpoint and stored with the run in RUN/report/thresholds_step_N.json.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve

from jaxaudio.models import outputs
from jaxaudio.train import forward
from jaxaudio.data import pipeline
from jaxaudio.data.prepare import prepare
from jaxaudio.runtime.errors import DataError
from jaxaudio.evaluation import heldout
from jaxaudio.runs.rundir import open_run, resolve_step

DEFAULT = 0.5


def best_f1(probs: np.ndarray, onehot: np.ndarray, classes: list[str]) -> dict[str, dict]:
  """{class: {threshold, f1, precision, recall, support}} maximising each class's F1."""
  out = {}
  for j, name in enumerate(classes):
    positives = int(onehot[:, j].sum())
    if positives == 0:
      out[name] = {"threshold": DEFAULT, "f1": None, "precision": None, "recall": None,
                   "support": 0}
      continue
    precision, recall, cuts = precision_recall_curve(onehot[:, j], probs[:, j])
    precision, recall = precision[:-1], recall[:-1]   # the last point has no threshold
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    below = probs[:, j][probs[:, j] < cuts[best]]
    threshold = (cuts[best] + (below.max() if below.size else 0.0)) / 2.0
    out[name] = {"threshold": float(threshold), "f1": float(f1[best]),
                 "precision": float(precision[best]), "recall": float(recall[best]),
                 "support": positives}
  return out


def path_for(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), "report", f"thresholds_step_{step}.json")


def for_run(workdir: str, step: int | str = "best", batch_size: int = 32) -> dict[str, Any]:
  """The run's per-class thresholds at checkpoint `step`: read from the run, or computed on
  its validation split and stored there. {"step", "split", "clips", "classes": {...}}."""
  step = resolve_step(workdir, step)
  path = path_for(workdir, step)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  run = open_run(workdir, step)
  prepared, _ = prepare(run.cfg.data, run.info.spec, progress=False)
  if not prepared.meta["splits"].get("validation", {}).get("windows"):
    raise DataError(f"{run.workdir} has no validation split to choose thresholds on; pass "
                    "a number as --threshold, or train with a validation split "
                    "(data.validation_fraction).")
  windows = heldout.window_outputs(heldout.apply_fn(run, run.variables),
                                      pipeline.eval_batches(prepared, "validation", batch_size,
                                                            0, 1))
  clips = forward.clip_level(windows, run.multi_label)
  probs = outputs.probabilities(clips["logits"], run.multi_label)
  labels = np.asarray(clips["label"])
  onehot = (labels.astype(bool) if run.multi_label
            else np.eye(len(run.classes), dtype=bool)[labels])
  result = {"step": step, "split": "validation", "clips": int(len(labels)),
            "classes": best_f1(probs, onehot, run.classes)}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, path)
  return result


def as_mapping(result: dict[str, Any]) -> dict[str, float]:
  """{class: threshold} of a for_run result."""
  return {c: float(v["threshold"]) for c, v in result["classes"].items()}
