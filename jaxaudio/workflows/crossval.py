"""K-fold cross-validation of a run's recipe: `python -m jaxaudio.evaluate --workdir=DIR --folds=K`.

The recipe is DIR/config.json. Fold i trains in DIR/cv/fold_i with fold i as its test split
(data.cv_folds / data.cv_fold; see jaxaudio.data.splits.cross_validation_splits), then is
evaluated like any run. A fold whose run is complete (its test report written, whether it
ran all its steps or stopped early) is not trained again, so an interrupted
cross-validation continues where it stopped. The summary - mean and sample
standard deviation (ddof=1) over folds of every metric - goes to
DIR/report/cross_validation.{json,md,png} and TensorBoard.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ml_collections
import numpy as np

from jaxaudio.runs import configs
from jaxaudio.workflows import finetune
from jaxaudio.runtime import hosts
from jaxaudio.evaluation import report
from jaxaudio.evaluation.heldout import evaluate_run
from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.runtime.bundle import write_bundle

CLASSIFICATION_KEYS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "mAP",
                       "micro_f1", "ece")


def fold_config(base: ml_collections.ConfigDict, folds: int, fold: int
                ) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(base.to_dict())
  cfg.data.cv_folds, cfg.data.cv_fold = folds, fold
  # cross_validate evaluates each fold itself, with the options it was given
  cfg.evaluate = ml_collections.ConfigDict(dict(base.get("evaluate") or {}, at_end=False))
  return cfg


def _stats(values: list[float]) -> dict[str, Any]:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "folds": [float(x) for x in v]}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
  """Mean/std per metric over fold results of evaluate_run."""
  out: dict[str, Any] = {"folds": len(results), "classification": {}, "retrieval": {},
                         "robustness": {}}
  for key in CLASSIFICATION_KEYS:
    if all(key in r["classification"] for r in results):
      out["classification"][key] = _stats([r["classification"][key] for r in results])
  out["classification"]["num_examples"] = [r["classification"]["num_examples"]
                                           for r in results]
  for model in results[0].get("retrieval", {}):
    out["retrieval"][model] = {k: _stats([r["retrieval"][model][k] for r in results])
                               for k in results[0]["retrieval"][model] if k != "num_queries"}
  for cond, row in results[0].get("robustness", {}).items():
    out["robustness"][cond] = {k: _stats([r["robustness"][cond][k] for r in results])
                               for k in row}
  return out


def markdown(summary: dict[str, Any], workdir: str) -> str:
  k = summary["folds"]
  fmt = lambda s: f"{s['mean']:.4f} ± {s['std']:.4f}"  # noqa: E731
  lines = [f"# {k}-fold cross-validation of {workdir}", "",
           f"Mean ± sample standard deviation over {k} folds; each fold's test clips: "
           f"{summary['classification']['num_examples']}.", "",
           "| metric | mean ± std | " + " | ".join(f"fold {i + 1}" for i in range(k)) + " |",
           "|---|---:|" + "---:|" * k]
  for key, s in summary["classification"].items():
    if key != "num_examples":
      lines.append(f"| {key} | {fmt(s)} | " + " | ".join(f"{x:.4f}" for x in s["folds"]) + " |")
  if summary["retrieval"]:
    models = list(summary["retrieval"])
    keys = list(summary["retrieval"][models[0]])
    lines += ["", "## Retrieval", "", "| model | " + " | ".join(keys) + " |",
              "|---|" + "---:|" * len(keys)]
    for m in models:
      lines.append(f"| {m} | " + " | ".join(fmt(summary["retrieval"][m][x]) for x in keys)
                   + " |")
  if summary["robustness"]:
    keys = [x for x in summary["robustness"]["clean"] if not x.startswith("drop_")]
    lines += ["", "## Robustness", "", "| condition | " + " | ".join(
        f"{x} | drop" for x in keys) + " |", "|---|" + "---:|---:|" * len(keys)]
    for cond, row in summary["robustness"].items():
      lines.append(f"| {cond} | " + " | ".join(f"{fmt(row[x])} | {fmt(row['drop_' + x])}"
                                               for x in keys) + " |")
  return "\n".join(lines) + "\n"


def figure(summary: dict[str, Any]):
  plt = report.pyplot()
  keys = [x for x in ("accuracy", "macro_f1", "mAP") if x in summary["classification"]]
  k = summary["folds"]
  fig, ax = plt.subplots(figsize=(1.6 + 0.9 * k, 3.4), dpi=100)
  width = 0.8 / len(keys)
  for j, key in enumerate(keys):
    s = summary["classification"][key]
    xs = np.arange(k) + j * width
    ax.bar(xs, s["folds"], width=width, label=f"{key} ({s['mean']:.3f} ± {s['std']:.3f})")
    ax.axhline(s["mean"], color=f"C{j}", lw=1, ls="--")
  ax.set_xticks(np.arange(k) + 0.4 - width / 2, [f"fold {i + 1}" for i in range(k)])
  ax.set_ylim(0, 1)
  ax.set_title("cross-validation: test metrics per fold (dashed: mean)", fontsize=9)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  return fig


def _say(line: str) -> None:
  if hosts.is_primary():
    print(line, file=sys.stderr, flush=True)


def cross_validate(workdir: str, folds: int, with_retrieval: bool = False,
                   with_robustness: bool = False, bootstrap: int = 1000) -> dict[str, Any]:
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"{workdir} has no config.json; pass the --workdir of a `python -m "
                          "jaxaudio.main` run, whose recipe the folds repeat.")
  with open(path) as f:
    base = configs.from_saved(json.load(f))
  results = []
  for fold in range(1, folds + 1):
    fold_dir = os.path.join(workdir, "cv", f"fold_{fold}")
    cfg = fold_config(base, folds, fold)
    # A finished fold has its test report, also when it stopped early.
    if not os.path.isfile(os.path.join(fold_dir, "report", "test_metrics.json")):
      _say(f"cross-validation fold {fold}/{folds}: training in {fold_dir}")
      finetune.run(cfg, fold_dir)
    results.append(evaluate_run(fold_dir, "test", "best", with_retrieval, with_robustness,
                                bootstrap))
    c = results[-1]["classification"]
    scores = ", ".join(f"{k} {c[k]:.4f}" for k in ("accuracy", "macro_f1", "mAP", "micro_f1")
                       if k in c)
    _say(f"cross-validation fold {fold}/{folds}: {scores} on {c['num_examples']} test clips")
  summary = summarise(results)
  summary["workdir"] = workdir
  if not hosts.is_primary():   # every process ran the folds; process 0 writes the summary
    return summary
  fig = figure(summary)
  write_bundle(os.path.join(workdir, "report"), "cross_validation", summary,
               markdown(summary, workdir), {"cross_validation": fig})
  writer = report.summary_writer(workdir)
  scalars = {}
  for key, s in summary["classification"].items():
    if key != "num_examples":
      scalars.update({f"cv_{key}_mean": s["mean"], f"cv_{key}_std": s["std"]})
  writer.write_scalars(folds, scalars)
  writer.write_images(folds, {"cv_folds": report.figure_to_array(fig)[None]})
  writer.flush()
  return summary
