"""What a sweep reports: DIR/report/sweep.{json,md}, Optuna's plots as PNG, the trials'
hyperparameters in TensorBoard, and DIR/best_config.py, which reproduces the best trial."""

from __future__ import annotations

import math
import os
import pprint
import warnings
from typing import Any

import ml_collections
import numpy as np
import optuna

from jaxaudio.evaluation import report
from jaxaudio.tuning import space
from jaxaudio.runtime.bundle import write_bundle

TEST_NOTE = ("The best trial was chosen on the validation split alone; this test figure was "
             "computed once, after the choice, and was not used to make it.")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
  rows = []
  for t in study.get_trials(deepcopy=False):
    attrs = t.user_attrs
    rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                 "params": dict(t.params), "workdir": attrs.get("workdir"),
                 "cores": attrs.get("cores"),
                 "seconds": attrs.get("seconds"), "steps": attrs.get("steps"),
                 "num_steps": attrs.get("num_steps"), "pruned_step": attrs.get("pruned_step"),
                 "fail_reason": attrs.get("fail_reason")})
  return rows


def pruning(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """How many trials the pruner stopped and the time they would have taken to finish,
  estimated from each one's own rate."""
  pruned = [r for r in rows if r["state"] == "PRUNED" and r["steps"] and r["seconds"]]
  saved = sum(r["seconds"] / r["steps"] * max(r["num_steps"] - r["steps"], 0) for r in pruned)
  spent = sum(r["seconds"] or 0.0 for r in rows)
  return {"pruned": sum(r["state"] == "PRUNED" for r in rows), "seconds_saved": saved,
          "seconds_spent": spent}


def importances(study: optuna.Study) -> tuple[dict[str, float], str]:
  """fANOVA importances over the completed trials, or ({}, why there are none): they need
  two completed trials, a parameter that varied and scores that differ."""
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  if len(complete) < 2:
    return {}, f"{len(complete)} completed trial(s); importances need at least 2"
  if len({t.value for t in complete}) == 1:
    return {}, (f"all {len(complete)} completed trials scored {complete[0].value:.4g}: "
                "no parameter explains a difference")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return {k: float(v) for k, v in optuna.importance.get_param_importances(
          study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)).items()}, ""
  except (RuntimeError, ValueError) as e:   # e.g. no parameter varied among completed trials
    return {}, f"fANOVA could not be computed ({e})"


def summarise(study: optuna.Study, objective: str, n_trials: int, storage: str
              ) -> dict[str, Any]:
  rows = trial_rows(study)
  trials = study.get_trials(deepcopy=False)
  starts = [t.datetime_start for t in trials if t.datetime_start]
  ends = [t.datetime_complete for t in trials if t.datetime_complete]
  wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
  complete = [r for r in rows if r["state"] == "COMPLETE"]
  best = max(complete, key=lambda r: (r["value"], -r["number"])) if complete else None
  imp, why = importances(study)
  return {"study": study.study_name, "storage": storage, "objective": objective,
          "n_trials": n_trials, "trials": rows,
          "counts": {s: sum(r["state"] == s for r in rows)
                     for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
          "best": ({k: best[k] for k in ("number", "value", "params", "workdir", "cores")}
                   if best else None),
          "pruning": pruning(rows), "importances": imp, "importances_note": why,
          "wall_seconds": wall}


def best_config(base: ml_collections.ConfigDict, params: list[space.Param],
                summary: dict[str, Any], path: str, sweep_dir: str) -> str:
  """The text of best_config.py: the best trial's config as a config file."""
  best = summary["best"]
  cfg = space.trial_config(base, params, best["params"])
  cfg.evaluate.at_end = True
  cores = (f"The trial ran on {best['cores']} core(s); XLA's CPU arithmetic depends on the "
           f"thread count,\nso `taskset -c 0-{best['cores'] - 1} python -m jaxaudio.main ...` "
           "repeats it bit for bit.\n") if best.get("cores") else ""
  return (f'"""Trial {best["number"]} of the sweep in {sweep_dir}: validation '
          f'{summary["objective"]} {best["value"]:.4f}, the best of '
          f'{summary["counts"]["COMPLETE"]} completed trials.\n\n'
          "Reproduce it as an ordinary run:\n"
          f"  python -m jaxaudio.main --config={path} --workdir={sweep_dir}/best\n{cores}"
          '"""\n\nimport ml_collections\n\n'
          f"CONFIG = {pprint.pformat(cfg.to_dict(), width=96, sort_dicts=True)}\n\n\n"
          "def get_config():\n  return ml_collections.ConfigDict(CONFIG)\n")


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def markdown(summary: dict[str, Any], sweep_dir: str) -> str:
  counts, p = summary["counts"], summary["pruning"]
  lines = [f"# Sweep {summary['study']} in {sweep_dir}", "",
           f"Objective: validation {summary['objective']} of each trial's best checkpoint "
           f"(maximised). Trials: {counts['COMPLETE']} completed, {counts['PRUNED']} pruned, "
           f"{counts['FAIL']} failed" + (f", {counts['RUNNING']} still running"
                                         if counts["RUNNING"] else "")
           + f" (of {summary['n_trials']}). Storage: {summary['storage']}.", "",
           f"Wall time from the first trial's start to the last one's end: "
           f"{summary['wall_seconds']:.0f} s; time in trials: {p['seconds_spent']:.0f} s; the "
           f"pruner stopped {p['pruned']} "
           f"trials, saving about {p['seconds_saved']:.0f} s (each pruned trial's remaining "
           "steps at its own rate).", ""]
  best = summary["best"]
  if best:
    lines += ["## Best trial", "",
              f"Trial {best['number']}: validation {summary['objective']} "
              f"**{best['value']:.4f}** ({best['workdir']}).", ""]
    lines += [f"- `{k}` = {_fmt(v)}" for k, v in best["params"].items()]
    lines += ["", f"Reproduce: `python -m jaxaudio.main --config={sweep_dir}/best_config.py "
              f"--workdir={sweep_dir}/best`", ""]
  test = summary.get("test")
  if test and "skipped" in test:
    lines += ["## Test split", "", f"Not evaluated: {test['skipped']}.", ""]
  elif test:
    lo, hi = test.get("accuracy_ci95", (math.nan, math.nan))
    lines += ["## Test split (after the choice)", "", TEST_NOTE, "",
              "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {test[k]:.4f} |" for k in ("accuracy", "macro_f1", "mAP", "micro_f1",
                                                    "ece") if k in test]
    if "accuracy_ci95" in test:
      lines.append(f"| accuracy 95% interval | {lo:.4f}-{hi:.4f} |")
    lines.append("")
  if summary["importances"]:
    lines += ["## Parameter importances (fANOVA over completed trials)", "",
              "| parameter | importance |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in summary["importances"].items()]
    lines.append("")
  elif summary.get("importances_note"):
    lines += ["## Parameter importances", "", f"None: {summary['importances_note']}.", ""]
  keys = sorted({k for r in summary["trials"] for k in r["params"]})
  lines += ["## Trials", "", "| trial | state | value | seconds | steps | " + " | ".join(
      k.split(".", 1)[-1] for k in keys) + " |", "|---:|---|---:|---:|---:|" + "---|" * len(keys)]
  order = sorted(summary["trials"], key=lambda r: (r["value"] is None, -(r["value"] or 0)))
  for r in order:
    steps = f"{r['steps']}/{r['num_steps']}" if r["num_steps"] else ""
    lines.append(f"| {r['number']} | {r['state']} | "
                 f"{'' if r['value'] is None else format(r['value'], '.4f')} | "
                 f"{'' if r['seconds'] is None else format(r['seconds'], '.0f')} | {steps} | "
                 + " | ".join(_fmt(r["params"].get(k, "")) for k in keys) + " |")
  failed = [r for r in summary["trials"] if r["fail_reason"]]
  if failed:
    lines += ["", "## Failed trials", ""]
    lines += [f"- trial {r['number']}: {r['fail_reason']}" for r in failed]
  return "\n".join(lines) + "\n"


class _Computed(optuna.importance.BaseImportanceEvaluator):
  """Hands Optuna's importance plot the importances the summary already computed, so fANOVA
  runs once and the plot shows the numbers the report prints."""

  def __init__(self, values: dict[str, float]):
    self.values = values

  def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
    return dict(self.values)


def plots(study: optuna.Study, out: str, importances: dict[str, float]) -> list[str]:
  """Optimisation history, parameter importances and parallel coordinates as PNG (those
  the completed trials allow; the importance plot only where `importances` has numbers)."""
  plt = report.pyplot()
  vis = optuna.visualization.matplotlib
  written = []
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  wanted = [("optimization_history", vis.plot_optimization_history, 1),
            ("param_importances", lambda s: vis.plot_param_importances(
                s, evaluator=_Computed(importances)), 2 if importances else math.inf),
            ("parallel_coordinate", vis.plot_parallel_coordinate, 2)]
  for name, plot, needed in wanted:
    if len(complete) < needed:
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = plot(study)
    except (RuntimeError, ValueError):
      continue
    fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 4.5))
    fig.tight_layout()
    written.append(write_bundle(out, None, figures={name: fig}, dpi=100)[name])
    plt.close(fig)
  return written


def hparams(summary: dict[str, Any], sweep_dir: str) -> None:
  """Each finished trial's sampled values and objective as a TensorBoard hparams run
  (DIR/tensorboard/trial_NNNN), so the HParams dashboard compares trials."""
  for r in summary["trials"]:
    if r["state"] not in ("COMPLETE", "PRUNED"):
      continue
    path = os.path.join(sweep_dir, "tensorboard", f"trial_{r['number']:04d}")
    if os.path.isdir(path):
      continue
    writer = report.summary_writer(path)
    writer.write_hparams({k: v for k, v in r["params"].items()})
    if r["value"] is not None:
      writer.write_scalars(0, {"sweep_objective": float(r["value"])})
    writer.flush()
    writer.close()


def write(sweep_dir: str, summary: dict[str, Any], study: optuna.Study,
          base: ml_collections.ConfigDict, params: list[space.Param]) -> str:
  """Write everything; returns the report directory."""
  out = os.path.join(sweep_dir, "report")
  os.makedirs(out, exist_ok=True)
  summary["plots"] = plots(study, out, summary["importances"])
  if summary["best"]:
    path = os.path.join(sweep_dir, "best_config.py")
    with open(path, "w") as f:
      f.write(best_config(base, params, summary, path, sweep_dir))
  write_bundle(out, "sweep", summary, markdown(summary, sweep_dir))
  hparams(summary, sweep_dir)
  return out
