"""The training run: prepare data, build, train with periodic validation and checkpoints,
resume after preemption, stop early or on divergence, then report on the test split.

A checkpoint holds the full TrainState and the data iterator, so killing the process at any
point and running the same command again ends with the same parameters (bitwise on CPU).
Pretrained weights are loaded only when the workdir has no checkpoint of its own.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import logging

import jax
import numpy as np
from flax import traverse_util

from jaxaudio import configs, inference
from jaxaudio.audio.frontend import silence_value
from jaxaudio.data import pipeline
from jaxaudio.data.prepare import prepare
from jaxaudio.errors import JaxAudioError
from jaxaudio.evaluate import predict, report
from jaxaudio.evaluate.evaluation import evaluate_run
from jaxaudio.evaluate.metrics import ConfusionMatrix, MultiLabelScores
from jaxaudio.models.registry import get_model
from jaxaudio.train import checkpointing, factory, head_only, optimizer, parallel, stages, steps
from jaxaudio.weights import pretrained


log = logging.getLogger("jaxaudio")


class TrainingDiverged(JaxAudioError):
  """The loss became NaN or infinite."""


def _score_name(cfg, multi_label: bool) -> str:
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


class _Run:
  """What a run compiles from the config: a Setup (model, optimizer, trainable mask) turned
  into parallel train/eval steps and the data they train on, rebuilt at each stage."""

  def __init__(self, cfg, info, prepared):
    self.cfg, self.info, self.prepared = cfg, info, prepared
    self.num_classes, self.multi_label = len(prepared.classes), prepared.multi_label
    self.pmap = cfg.parallel == "pmap"
    self.axis = parallel.PMAP_AXIS if self.pmap else None
    self.widths = tuple(cfg.model.widths) or None
    self.plan = stages.plan(cfg.train)
    self.cache = None   # head_only.EmbeddingCache while head-only stages train
    t = cfg.train
    self.train_labels = None      # window labels of train, for balancing
    self.class_weights = None
    if t.class_weights != "none" or t.sampling != "uniform":
      if self.multi_label:
        raise JaxAudioError("train.class_weights and train.sampling=balanced are for "
                            "single-label data; this data set is multi-label: set them to "
                            "none / uniform.")
      self.train_labels = pipeline.window_labels(prepared.data_source("train"))
      counts = np.bincount(self.train_labels, minlength=self.num_classes)
      log.info("train windows per class: %s", ", ".join(
          f"{c} {n}" for c, n in zip(prepared.classes, counts)))
      if t.class_weights == "balanced":
        self.class_weights = pipeline.balanced_class_weights(self.train_labels, self.num_classes)

  def build(self, pretrained, stage: int) -> factory.Setup:
    return factory.build(self.info, self.num_classes, self.cfg.train, pretrained=pretrained,
                         widths=self.widths, bn_axis_name=self.axis, plan=self.plan, stage=stage)

  def restage(self, setup, stage: int, host_state):
    return factory.restage(setup, self.info, self.num_classes, self.cfg.train, self.plan, stage,
                           host_state, widths=self.widths, bn_axis_name=self.axis)

  def compile(self, setup: factory.Setup, head_only_model=None) -> parallel.Parallel:
    augment = self.cfg.train.augment
    if head_only_model is not None:
      augment = head_only.augment_config(augment)
    step_cfg = steps.StepConfig(
        model=head_only_model or setup.model, tx=setup.tx, trainable=setup.trainable,
        num_classes=self.num_classes, multi_label=self.multi_label, augment=augment,
        spec=self.info.spec, silence=silence_value(self.info.spec), axis_name=self.axis,
        label_smoothing=float(self.cfg.train.label_smoothing), class_weights=self.class_weights)
    return parallel.make(self.cfg.parallel, step_cfg)

  def enter(self, setup: factory.Setup, stage: int, host_state) -> tuple[parallel.Parallel, Any]:
    """Steps for `stage` and the data they read: cached embeddings for a head-only stage
    (embedded on first need), prepared log-mels otherwise (and the cache is dropped, as the
    backbone it came from is about to change)."""
    par = self.compile(setup)
    if not head_only.cached_stage(self.cfg.train, host_state.params, self.plan.rules[stage]):
      self.cache = None
      return par, self.prepared
    if self.cache is None:
      t0 = time.perf_counter()
      self.cache = head_only.embed_splits(par.eval_step, par.put_state(host_state), self.prepared,
                                          int(self.cfg.train.batch_size), self.cfg.parallel,
                                          par.mesh)
      log.info("backbone frozen in this stage: embedded %d windows once in %.1f s; training the "
               "head on cached embeddings (train.cache_embeddings=off to disable)",
               sum(len(v["clip"]) for v in self.cache.splits.values()), time.perf_counter() - t0)
    return self.compile(setup, head_only.head_model(self.cfg.train, self.num_classes)), self.cache

  def loader(self, data):
    cached = data is not self.prepared   # in-memory arrays: worker processes would only copy
    return iter(pipeline.train_loader(
        data, "train", int(self.cfg.train.batch_size), seed=int(self.cfg.data.shuffle_seed),
        worker_count=0 if cached else int(self.cfg.data.loader_workers),
        balanced_labels=self.train_labels if self.cfg.train.sampling == "balanced" else None))


def _stop_if_diverged(metrics: list[dict[str, Any]], step: int, mgr) -> None:
  """TrainingDiverged when a step's loss or gradient norm in `metrics` (host copies) is not
  finite; called for every step before a checkpoint of its state can be written."""
  bad = next((m for m in metrics if not (np.all(np.isfinite(m["loss"]))
                                         and np.all(np.isfinite(m["grad_norm"])))), None)
  if bad is None:
    return
  mgr.close()   # waits for pending saves: the message promises the last one is on disk
  last = mgr.latest_step()
  kept = (f"the last good checkpoint (step {last}) is intact" if last is not None
          else "no checkpoint had been written yet")
  what = "loss" if not np.all(np.isfinite(bad["loss"])) else "gradient norm"
  value = float(np.mean(bad["loss"] if what == "loss" else bad["grad_norm"]))
  raise TrainingDiverged(
      f"the training {what} became {value} by step {step}; {kept}; lower "
      "train.learning_rate or train.grad_clip_norm and run the same command again.")


def train_and_evaluate(cfg, workdir: str) -> dict[str, Any]:
  """Run (or continue) the configured fine-tuning in `workdir`; returns the test report."""
  configs.validate(cfg)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  info = get_model(cfg.model.name)
  prepared, _ = prepare(cfg.data, info.spec, progress=jax.process_index() == 0)
  if not int(cfg.train.num_steps):   # epochs of fine-tuning, after the probe
    cfg.train.num_steps = int(cfg.train.probe_steps) + max(1, math.ceil(
        float(cfg.train.epochs) * prepared.num_windows("train") / int(cfg.train.batch_size)))
    log.info("train.epochs=%g over %d training windows: %d steps (probe %d)",
             float(cfg.train.epochs), prepared.num_windows("train"), cfg.train.num_steps,
             int(cfg.train.probe_steps))
  if jax.process_index() == 0:   # what evaluation and search rebuild the model from
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2, sort_keys=True))
  begin = time.perf_counter()
  classes, multi_label = prepared.classes, prepared.multi_label
  if jax.process_index() == 0:   # the label map a saved model's logits index into
    with open(os.path.join(workdir, "labels.json"), "w") as f:
      json.dump({"classes": classes, "multi_label": multi_label, "model": cfg.model.name}, f,
                indent=2)
  batch_size = int(cfg.train.batch_size)
  mgr = checkpointing.manager(workdir, int(cfg.train.checkpoint_keep))
  latest = mgr.latest_step()
  run = _Run(cfg, info, prepared)
  # A checkpoint at step k holds the optimizer state of the stage that made update k - 1.
  stage = run.plan.index(max(latest - 1, 0)) if latest else 0
  setup = run.build(pretrained.initial_variables(cfg, info, latest is not None), stage)
  never_trained = optimizer.frozen_layer_groups(
      setup.state.params, optimizer.assign_groups(setup.state.params, run.plan.rules[-1]),
      info.layer_groups)
  if cfg.model.init == "scratch" and never_trained:
    log.warning("model.init=scratch with layer groups %s frozen to the end: they stay at "
                "their random initialisation; set train.param_groups to train them",
                ", ".join(never_trained))
  log.info("parameter groups (stage %d):\n%s", stage,
           optimizer.describe(setup.assignment, setup.state.params))
  host_state = checkpointing.to_host(setup.state)  # device buffers are donated to the step
  meta = {"best_score": -math.inf, "best_step": -1, "evals_without_improvement": 0}
  resumed = None   # global arrays on the mesh, read by every process
  if latest is not None:
    resumed, meta = checkpointing.restore(mgr, latest, host_state, parallel.replicated())
    host_state = checkpointing.to_host(resumed)
    log.info("resumed from step %d in %s", latest, workdir)
  par, data = run.enter(setup, stage, host_state)
  iterator = run.loader(data)
  if latest is not None:
    checkpointing.restore_data(mgr, latest, iterator)
  state = par.put_state(host_state if resumed is None else resumed)
  step = int(np.asarray(host_state.step))
  num_steps = int(cfg.train.num_steps)
  score_name = _score_name(cfg, multi_label)
  image_windows = _example_windows(prepared, "validation", int(cfg.train.logmel_images))
  writer = report.summary_writer(workdir)
  if latest is None:
    writer.write_hparams({k: str(v) for k, v in
                          traverse_util.flatten_dict(cfg.to_dict(), sep=".").items()})
  from clu import periodic_actions  # pylint: disable=import-outside-toplevel
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                             every_secs=60)
  window = []
  logged = (step, time.perf_counter())   # step and time of the last console line
  while step < num_steps:
    if run.plan.index(step) != stage:
      stage = run.plan.index(step)
      setup, host = run.restage(setup, stage, par.get_state(state))
      previous = data
      par, data = run.enter(setup, stage, host)
      if data is not previous:   # between cached embeddings and log-mels
        iterator = run.loader(data)
      state = par.put_state(host)
      log.info("stage %d from step %d: now training %s; parameter groups:\n%s", stage, step,
               ", ".join(setup.learning_rates(step)),
               optimizer.describe(setup.assignment, host.params))
    batch = next(iterator)
    state, metrics = par.train_step(state, pipeline.device_batch(batch, cfg.parallel, par.mesh))
    step += 1
    window.append(metrics)
    progress(step)
    if step % int(cfg.train.log_every) == 0 or step == num_steps:
      host = jax.device_get(window)
      window = []
      means = {f"train_{k}": float(np.mean([np.mean(m[k]) for m in host])) for k in host[0]}
      _stop_if_diverged(host, step, mgr)
      means.update({f"lr_{g}": lr for g, lr in setup.learning_rates(step - 1).items()})
      writer.write_scalars(step, means)
      now = time.perf_counter()   # rate over this log interval: stages differ in speed
      log.info("step %d/%d: %s (%.1f steps/s)", step, num_steps,
               ", ".join(f"{k}={v:.4g}" for k, v in means.items()),
               (step - logged[0]) / max(now - logged[1], 1e-9))
      logged = (step, now)
    if step % int(cfg.train.eval_every) == 0 or step == num_steps:
      # Every step since the last console line is checked before its state can be saved.
      _stop_if_diverged(jax.device_get(window), step, mgr)
      pred = predict.predict_windows(par.eval_step, state, data, "validation", batch_size,
                                     cfg.parallel, par.mesh)
      scores = _scores(pred, len(classes), multi_label)
      scalars = {f"eval_{k}": float(v) for k, v in scores.items() if np.ndim(v) == 0}
      scalars["eval_loss"] = float(np.mean(pred["loss"]))
      writer.write_scalars(step, scalars)
      images = {}
      if not multi_label:
        fig = report.confusion_figure(np.asarray(ConfusionMatrix.empty(len(classes)).merge(
            ConfusionMatrix.from_model_output(logits=pred["logits"], labels=pred["label"])
        ).matrix), classes, f"validation, step {step}")
        images["eval_confusion_matrix"] = report.figure_to_array(fig)[None]
      if image_windows:
        images["eval_logmel"] = _logmel_images(prepared, image_windows, pred, classes,
                                               multi_label, step)
      if images and jax.process_index() == 0:
        writer.write_images(step, images)
      score = float(scores[score_name])
      # Ties move "best" to the later step, as orbax's BestN keeps the latest of equals; only
      # a strict improvement resets the early-stopping count.
      improved = score > meta["best_score"]
      if score >= meta["best_score"]:
        meta.update(best_score=score, best_step=step)
      meta["evals_without_improvement"] = 0 if improved else meta["evals_without_improvement"] + 1
      checkpointing.save(mgr, step, par.global_state(state), iterator, meta, score)
      log.info("validation at step %d: %s=%.4f (best %.4f at step %d)", step, score_name,
               score, meta["best_score"], meta["best_step"])
      patience = int(cfg.train.early_stop_patience)
      if patience and meta["evals_without_improvement"] >= patience:
        log.info("early stop at step %d: %d validations without improvement", step, patience)
        break
  mgr.wait_until_finished()
  # The best checkpoint may come from an earlier stage: restore into that stage's layout.
  _, template = run.restage(setup, run.plan.index(max(meta["best_step"] - 1, 0)),
                            par.get_state(state))
  best, _ = checkpointing.restore(mgr, meta["best_step"], template, parallel.replicated())
  if not head_only.applies(cfg.train, best.params, run.plan):
    # The backbone trained at some stage: the test split goes through the full model.
    par, data = run.compile(setup), prepared
  pred = predict.clip_level(predict.predict_windows(
      par.eval_step, par.put_state(best), data, "test", batch_size, cfg.parallel, par.mesh),
      multi_label)
  test = report.classification_report(pred, classes, multi_label)
  test.update(best_step=meta["best_step"], validation_score={score_name: meta["best_score"]},
              train_seconds=time.perf_counter() - begin)
  if jax.process_index() == 0:
    report.write_test_report(workdir, test, classes)
    writer.write_scalars(step, {f"test_{k}": float(v) for k, v in test.items()
                                if k in ("accuracy", "macro_f1", "mAP", "micro_f1")})
  writer.flush()
  mgr.close()
  ev = cfg.get("evaluate") or {}
  if ev.get("at_end", False):   # every process: the restore and the gathers are collective
    log.info("evaluating the best checkpoint (step %d) on the test split", meta["best_step"])
    result = evaluate_run(workdir, "test", meta["best_step"], bool(ev.get("retrieval")),
                          bool(ev.get("robustness")), int(ev.get("bootstrap", 1000)), batch_size)
    lo, hi = result["classification"].get("accuracy_ci95", (float("nan"),) * 2)
    log.info("test accuracy 95%% interval %.4f-%.4f, ECE %s; report: %s", lo, hi,
             result["classification"].get("ece"), os.path.join(workdir, "report",
                                                               "evaluation.md"))
  return test
