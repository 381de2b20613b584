"""The fit loop: build, train through the stages with periodic validation and checkpoints,
resume after preemption, stop early or on divergence.

A checkpoint holds the full TrainState and the data iterator, so killing the processes at
any point and running the same command again ends with the same parameters (bitwise on
CPU). Pretrained weights are loaded only when the workdir has no checkpoint of its own. What
a validation means (metrics, figures, the score) is the caller's: jaxaudio.workflows.finetune.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterable, Protocol

import jax
import numpy as np
from flax import traverse_util

from jaxaudio.train import forward
from jaxaudio.audio.frontend import silence_value
from jaxaudio.data import pipeline
from jaxaudio.runtime.errors import JaxAudioError
from jaxaudio.models.registry import ModelInfo
from jaxaudio.train import checkpointing, factory, head_only, optimizer, parallel, stages, steps
from jaxaudio.weights import pretrained


log = logging.getLogger("jaxaudio")


class TrainingDiverged(JaxAudioError):
  """The loss became NaN or infinite."""


class Validator(Protocol):
  """Scores the validation windows' outputs (logits, loss, label, clip) at a step; higher is
  better. `name` is the score's name for the log."""

  name: str

  def __call__(self, step: int, windows: dict[str, np.ndarray]) -> float: ...


@dataclasses.dataclass
class Fitted:
  """A finished fit: the best checkpoint by validation and how to run it over a split."""

  best_step: int
  best_score: float
  last_step: int   # the last step trained (before num_steps when it stopped early)
  predict: Callable[[str], dict[str, np.ndarray]]   # split -> window outputs of the best state


class _Stages:
  """What a run compiles from the config: a Setup (model, optimizer, trainable mask) turned
  into parallel train/eval steps and the data they train on, rebuilt at each stage."""

  def __init__(self, cfg, info, prepared, embeddings_dir: str | None = None):
    self.cfg, self.info, self.prepared = cfg, info, prepared
    self.embeddings_dir = embeddings_dir
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
    # Before any backbone update (stage 0) the embeddings are the initial model's, which runs
    # that share model, initialisation and data can share through embeddings_dir.
    shared = (head_only.shared_cache_path(self.embeddings_dir, self.cfg, self.prepared)
              if self.embeddings_dir and stage == 0 else None)
    if self.cache is None and shared:
      self.cache = head_only.load_cache(shared, self.prepared)
      if self.cache is not None:
        log.info("backbone frozen in this stage: training the head on the shared embeddings "
                 "in %s", shared)
    if self.cache is None:
      t0 = time.perf_counter()
      self.cache = head_only.embed_splits(par.eval_step, par.put_state(host_state), self.prepared,
                                          int(self.cfg.train.batch_size), self.cfg.parallel,
                                          par.mesh)
      log.info("backbone frozen in this stage: embedded %d windows once in %.1f s; training the "
               "head on cached embeddings (train.cache_embeddings=off to disable)",
               sum(len(v["clip"]) for v in self.cache.splits.values()), time.perf_counter() - t0)
      if shared:
        head_only.save_cache(shared, self.cache)
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


def fit(cfg, workdir: str, info: ModelInfo, prepared, validate: Validator, writer,
        hooks: Iterable[Callable[[int], Any]] = (),
        on_validation: Callable[[int, float], Any] | None = None,
        embeddings_dir: str | None = None) -> Fitted:
  """Train (or continue training) the configured model on `prepared` in `workdir`.

  `writer` (a clu metric writer) gets the train scalars, `hooks` are called with each step
  number (progress reporting), `validate` scores every validation. `on_validation(step,
  score)` hears each validation once its checkpoint is saved; whatever it raises (a sweep's
  pruner stopping the trial) ends the fit with that checkpoint on disk. `embeddings_dir`
  shares the frozen backbone's embeddings of a probe stage with other runs (sweep trials).
  Every process calls it.
  """
  batch_size = int(cfg.train.batch_size)
  mgr = checkpointing.manager(workdir, int(cfg.train.checkpoint_keep))
  latest = mgr.latest_step()
  run = _Stages(cfg, info, prepared, embeddings_dir)
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
  host_state = parallel.host_copy(setup.state)  # device buffers are donated to the step
  meta = {"best_score": -math.inf, "best_step": -1, "evals_without_improvement": 0}
  resumed = None   # global arrays on the mesh, read by every process
  if latest is not None:
    resumed, meta = checkpointing.restore(mgr, latest, host_state, parallel.replicated())
    host_state = parallel.host_copy(resumed)
    log.info("resumed from step %d in %s", latest, workdir)
  else:
    writer.write_hparams({k: str(v) for k, v in
                          traverse_util.flatten_dict(cfg.to_dict(), sep=".").items()})
  par, data = run.enter(setup, stage, host_state)
  iterator = run.loader(data)
  if latest is not None:
    checkpointing.restore_data(mgr, latest, iterator)
  state = par.put_state(host_state if resumed is None else resumed)
  step = int(np.asarray(host_state.step))
  num_steps = int(cfg.train.num_steps)
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
    for hook in hooks:
      hook(step)
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
      score = float(validate(step, forward.predict_windows(
          par.eval_step, state, data, "validation", batch_size, cfg.parallel, par.mesh)))
      # Ties move "best" to the later step, as orbax's BestN keeps the latest of equals; only
      # a strict improvement resets the early-stopping count.
      improved = score > meta["best_score"]
      if score >= meta["best_score"]:
        meta.update(best_score=score, best_step=step)
      meta["evals_without_improvement"] = 0 if improved else meta["evals_without_improvement"] + 1
      checkpointing.save(mgr, step, par.global_state(state), iterator, meta, score)
      log.info("validation at step %d: %s=%.4f (best %.4f at step %d)", step, validate.name,
               score, meta["best_score"], meta["best_step"])
      if on_validation is not None:
        try:
          on_validation(step, score)
        except BaseException:
          mgr.close()   # waits for the save above: a stopped run keeps its last checkpoint
          raise
      patience = int(cfg.train.early_stop_patience)
      if patience and meta["evals_without_improvement"] >= patience:
        log.info("early stop at step %d: %d validations without improvement", step, patience)
        break
  mgr.wait_until_finished()
  # The best checkpoint may come from an earlier stage: restore into that stage's layout.
  _, template = run.restage(setup, run.plan.index(max(meta["best_step"] - 1, 0)),
                            par.get_state(state))
  best, _ = checkpointing.restore(mgr, meta["best_step"], template, parallel.replicated())
  mgr.close()
  if not head_only.applies(cfg.train, best.params, run.plan):
    # The backbone trained at some stage: other splits go through the full model.
    par, data = run.compile(setup), prepared
  best = par.put_state(best)

  def predict(split: str) -> dict[str, np.ndarray]:
    return forward.predict_windows(par.eval_step, best, data, split, batch_size, cfg.parallel,
                                   par.mesh)
  return Fitted(meta["best_step"], meta["best_score"], step, predict)
