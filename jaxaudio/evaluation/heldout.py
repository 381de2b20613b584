"""Evaluate a trained run: per-clip classification with uncertainty, retrieval quality before
and after fine-tuning, and robustness to degraded audio. Figures go to DIR/report/.

Everything is per clip (window outputs averaged, as the trainer's test report does), on the
run's best checkpoint unless told otherwise.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import jax
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from jaxaudio.models import outputs
from jaxaudio.train import forward
from jaxaudio.runtime import hosts
from jaxaudio.data import pipeline
from jaxaudio.audio.featurize import featurize
from jaxaudio.data.prepare import prepare, settings_from_config
from jaxaudio.data.sources import list_source
from jaxaudio.audio.io import read_audio
from jaxaudio.evaluation import calibration, perturb, report, retrieval
from jaxaudio.runs.rundir import TrainedRun, open_run, starting_variables
from jaxaudio.runtime.bundle import write_bundle

log = logging.getLogger("jaxaudio")


def apply_fn(run: TrainedRun, variables) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
  fn = jax.jit(lambda v, x: run.model.apply(v, x, train=False))
  return lambda x: jax.device_get(fn(variables, x))


def window_outputs(apply: Callable, batches) -> dict[str, np.ndarray]:
  """logits, embedding, label, clip of every real (unmasked) window."""
  out = forward.collect(lambda b: apply(b["mel"]), batches, ("logits", "embedding"))
  return {k: v.astype(np.float32) if k in ("logits", "embedding") else v
          for k, v in out.items()}


def classification(windows: dict[str, np.ndarray], classes: list[str], multi_label: bool,
                   bootstrap: int = 1000, seed: int = 0) -> tuple[dict[str, Any], dict]:
  """The trainer's report fields + ECE, bootstrap 95% intervals and per-class AP; also the
  clip-level predictions (for curves)."""
  clips = forward.clip_level(windows, multi_label)
  rep = report.classification_report(clips, classes, multi_label)
  labels = np.asarray(clips["label"])
  probs = outputs.probabilities(clips["logits"], multi_label)
  if multi_label:
    key = "mAP"
    metric = lambda rows: calibration.mean_average_precision_of_resamples(labels, probs, rows)
  else:
    ece = calibration.expected_calibration_error(probs, labels)
    rep["ece"] = ece["ece"]
    rep["reliability"] = {k: np.asarray(v).tolist() for k, v in ece.items() if k != "ece"}
    pred = probs.argmax(1)
    key = "accuracy"
    metric = lambda rows: np.mean(pred[rows] == labels[rows], axis=1)
    if bootstrap:
      rep["macro_f1_ci95"] = list(calibration.bootstrap_interval(
          lambda rows: calibration.macro_f1_of_resamples(labels, pred, rows, len(classes)),
          len(labels), bootstrap, seed, vectorized=True))
  if bootstrap:
    rep[f"{key}_ci95"] = list(calibration.bootstrap_interval(metric, len(labels), bootstrap,
                                                             seed, vectorized=True))
  onehot = labels.astype(bool) if multi_label else np.eye(len(classes), dtype=bool)[labels]
  rep["per_class_ap"] = {c: float(average_precision_score(onehot[:, j], probs[:, j]))
                         for j, c in enumerate(classes) if onehot[:, j].any()}
  return rep, {"probs": probs, "onehot": onehot}


def retrieval_side_by_side(run: TrainedRun, prepared, split: str, tuned: dict[str, np.ndarray],
                           batch_size: int) -> dict[str, Any]:
  """Retrieval scores of the starting weights and of the fine-tuned ones on `split`."""
  name, base_vars = starting_variables(run)
  base = window_outputs(apply_fn(run, base_vars),
                        pipeline.eval_batches(prepared, split, batch_size))
  out = {}
  for label, windows in ((name, base), ("fine-tuned", tuned)):
    _, emb = retrieval.clip_embeddings(windows["embedding"], windows["clip"])
    # clip_level orders clips as clip_embeddings does (np.unique) and gives each its label.
    labels = forward.clip_level(windows, run.multi_label)["label"]
    out[label] = retrieval.retrieval_scores(emb, labels)
  return out


def robustness(run: TrainedRun, split: str, apply: Callable, batch_size: int,
               seed: int = 0) -> dict[str, dict[str, float]]:
  """Per-condition scores of `split` re-featurised from perturbed audio (file sources)."""
  listing = list_source(run.cfg.data)
  clips = [c for c in listing.split(split) if c.path]
  if not clips:
    raise ValueError(f"split {split} has no audio files to perturb (TFDS sources are not "
                     "supported by the robustness sweep yet)")
  index = {c: i for i, c in enumerate(listing.classes)}
  settings = settings_from_config(run.cfg.data)
  spec = run.info.spec.to_dict()
  limit = float(run.cfg.data.max_seconds) or None
  audio = [read_audio(c.path, limit) for c in clips]
  results = {}
  for name, fn in perturb.conditions().items():
    rng = np.random.default_rng(seed)
    records = []
    for i, (clip, (x, sr)) in enumerate(zip(clips, audio)):
      y = x if fn is None else fn(np.asarray(x, np.float64), sr, rng)
      res = featurize(i, spec, settings, waveform=np.asarray(y, np.float32), rate=sr)
      if res.error:
        continue
      label = (np.isin(listing.classes, clip.labels).astype(np.uint8) if listing.multi_label
               else index[clip.labels[0]])
      records += [{"mel": w, "label": label, "clip": i} for w in res.windows]
    batches = pipeline.padded_batches(records, listing.multi_label, batch_size)
    rep, _ = classification(window_outputs(apply, batches), run.classes, run.multi_label,
                            bootstrap=0)
    results[name] = {k: float(v) for k, v in rep.items()
                     if k in ("accuracy", "macro_f1", "mAP", "micro_f1", "ece")}
  clean = results["clean"]
  for cond in results.values():
    for k in list(cond):
      if not k.startswith("drop_") and k in clean:
        cond[f"drop_{k}"] = clean[k] - cond[k]
  return results


def pr_figure(curves: dict, classes: list[str]):
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
  for j, c in enumerate(classes):
    if curves["onehot"][:, j].any():
      p, r, _ = precision_recall_curve(curves["onehot"][:, j], curves["probs"][:, j])
      ax.plot(r, p, lw=1, label=c)
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_title("precision-recall per class (test clips)", fontsize=9)
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  return fig


def reliability_figure(rel: dict, ece: float):
  plt = report.pyplot()
  fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
  edges = np.asarray(rel["bin_edges"])
  centers = (edges[:-1] + edges[1:]) / 2
  ax.bar(centers, rel["bin_accuracy"], width=edges[1] - edges[0], edgecolor="black",
         alpha=0.7, label="accuracy")
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
  ax.set_xlabel("confidence")
  ax.set_ylabel("accuracy")
  ax.set_title(f"reliability (ECE {ece:.3f})", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def robustness_figure(table: dict[str, dict[str, float]], metric: str):
  plt = report.pyplot()
  names = list(table)
  fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
  ax.bar(range(len(names)), [table[n][metric] for n in names], color="tab:blue")
  ax.axhline(table["clean"][metric], color="black", lw=1, ls="--")
  ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
  ax.set_ylabel(metric)
  ax.set_title(f"robustness: test {metric} per condition (dashed: clean)", fontsize=9)
  fig.tight_layout()
  return fig


def markdown(result: dict[str, Any]) -> str:
  c = result["classification"]
  lines = [f"# Evaluation of {result['workdir']} (step {result['step']}, split {result['split']})",
           ""]
  if result.get("validation_shift"):
    lines += ["## Warning: validation does not mirror the test split", "",
              result["validation_shift"]["message"], ""]
  lines += ["## Classification (per clip)", "", "| metric | value | 95% CI |", "|---|---:|---|"]
  for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "mAP", "micro_f1",
              "ece"):
    if key in c:
      ci = c.get(f"{key}_ci95")
      lines.append(f"| {key} | {c[key]:.4f} | "
                   f"{f'{ci[0]:.4f} - {ci[1]:.4f}' if ci else ''} |")
  lines.append(f"\n{c['num_examples']} clips.\n")
  if "retrieval" in result:
    r = result["retrieval"]
    names = list(r)
    keys = [k for k in r[names[0]] if k != "num_queries"]
    lines += ["## Retrieval (each clip queries the others; relevant = shares a label)", "",
              "| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for n in names:
      lines.append(f"| {n} | " + " | ".join(f"{r[n][k]:.4f}" for k in keys) + " |")
    lines.append(f"\n{r[names[0]]['num_queries']} queries.\n")
  if "robustness" in result:
    t = result["robustness"]
    keys = [k for k in t["clean"] if not k.startswith("drop_")]
    lines += ["## Robustness (test audio perturbed, then prepared as in training)", "",
              "| condition | " + " | ".join(f"{k} | drop" for k in keys) + " |",
              "|---|" + "---:|---:|" * len(keys)]
    for name, row in t.items():
      lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4f} | {row[f'drop_{k}']:+.4f}"
                                              for k in keys) + " |")
  return "\n".join(lines) + "\n"


def shift_warning(validation: dict[str, Any], test: dict[str, Any], grouped: bool
                  ) -> dict[str, Any] | None:
  """The finding when test scores below validation beyond both 95% intervals (macro-F1, or
  mAP for multi-label runs): validation did not mirror what sets the test split apart (new
  speakers, rooms, instruments), so choosing by it rewarded memorisation. None otherwise."""
  key = "macro_f1" if "macro_f1_ci95" in test else "mAP"
  if f"{key}_ci95" not in validation or f"{key}_ci95" not in test:
    return None
  v_lo, v_hi = validation[f"{key}_ci95"]
  t_lo, t_hi = test[f"{key}_ci95"]
  if t_hi >= v_lo:
    return None
  fix = ("carve validation by what sets the test split apart: set data.group (column:NAME or "
         "regex:PATTERN naming the speaker, room, instrument or recording of each clip)"
         if not grouped else "make validation hold out what test holds out: data.group groups "
         "the clips, but not by what separates the test split from train")
  message = (f"test {key} {test[key]:.3f} (95% interval {t_lo:.3f}-{t_hi:.3f}) is far below "
             f"validation {key} {validation[key]:.3f} ({v_lo:.3f}-{v_hi:.3f}): validation does "
             f"not measure the shift the test split holds, so model selection rewarded "
             f"memorisation; {fix}.")
  return {"metric": key, "validation": validation[key], "validation_ci95": [v_lo, v_hi],
          "test": test[key], "test_ci95": [t_lo, t_hi], "message": message}


def evaluate_run(workdir: str, split: str = "test", step: int | str = "best",
                 with_retrieval: bool = False, with_robustness: bool = False,
                 bootstrap: int = 1000, batch_size: int = 32) -> dict[str, Any]:
  """Evaluate and write DIR/report/evaluation.{json,md} and figures; returns the result.

  In a multi-process job every process calls it: each runs the model on its slice of every
  batch, all get the gathered result, and process 0 writes the report."""
  run = open_run(workdir, step)
  prepared, _ = prepare(run.cfg.data, run.info.spec, progress=False)
  apply = apply_fn(run, run.variables)
  windows = window_outputs(apply, pipeline.eval_batches(prepared, split, batch_size))
  cls, curves = classification(windows, run.classes, run.multi_label, bootstrap)
  result: dict[str, Any] = {"workdir": run.workdir, "step": run.step, "split": split,
                            "classification": cls}
  if split == "test" and bootstrap:   # does validation mirror the test split? (one more pass)
    val, _ = classification(window_outputs(apply, pipeline.eval_batches(
        prepared, "validation", batch_size)), run.classes, run.multi_label, bootstrap)
    result["validation_shift"] = shift_warning(val, cls, bool(run.cfg.data.group) or any(
        c.group for c in list_source(run.cfg.data).clips))
    if result["validation_shift"] and hosts.is_primary():
      log.warning("warning: %s", result["validation_shift"]["message"])
  figures = {"pr_curves": pr_figure(curves, run.classes)}
  if not run.multi_label:
    figures["reliability"] = reliability_figure(cls["reliability"], cls["ece"])
  if with_retrieval:
    result["retrieval"] = retrieval_side_by_side(run, prepared, split, windows, batch_size)
  if with_robustness:
    result["robustness"] = robustness(run, split, apply, batch_size)
    metric = "mAP" if run.multi_label else "accuracy"
    figures["robustness"] = robustness_figure(result["robustness"], metric)
  if hosts.is_primary():
    _write(run, result, figures)
  return result


def _write(run: TrainedRun, result: dict[str, Any], figures) -> None:
  """DIR/report/evaluation.{json,md}, the figures as PNG, and all of it in TensorBoard."""
  write_bundle(os.path.join(run.workdir, "report"), "evaluation", result, markdown(result),
               figures)
  images = {f"evaluate_{name}": report.figure_to_array(fig)[None] for name, fig in figures.items()}
  _to_tensorboard(run, result, images)


def _to_tensorboard(run: TrainedRun, result: dict[str, Any], images) -> None:
  writer = report.summary_writer(run.workdir)
  scalars = {f"evaluate_{k}": float(v) for k, v in result["classification"].items()
             if isinstance(v, float)}
  for model, scores in result.get("retrieval", {}).items():
    scalars.update({f"retrieval_{model.replace(' ', '_')}_{k}": float(v)
                    for k, v in scores.items()})
  for cond, row in result.get("robustness", {}).items():
    scalars.update({f"robustness_{cond}_{k}": float(v) for k, v in row.items()})
  writer.write_scalars(run.step, scalars)
  writer.write_images(run.step, images)
  writer.flush()
