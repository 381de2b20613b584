"""The training run: prepare data, build, train with periodic validation and checkpoints,
resume after preemption, stop early or on divergence, then report on the test split.

A checkpoint holds the full TrainState and the data iterator, so killing the process at any
point and running the same command again ends with the same parameters (bitwise on CPU).
Pretrained weights are loaded only when the workdir has no checkpoint of its own.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import logging

import jax
import numpy as np

from jaxaudio import configs
from jaxaudio.audio.frontend import silence_value
from jaxaudio.data import pipeline
from jaxaudio.data.prepare import prepare
from jaxaudio.errors import JaxAudioError
from jaxaudio.evaluate import predict, report
from jaxaudio.evaluate.metrics import ConfusionMatrix, MultiLabelScores
from jaxaudio.models.registry import get_model
from jaxaudio.train import checkpointing, factory, parallel, steps
from jaxaudio.weights.pretrained import pretrained_variables


log = logging.getLogger("jaxaudio")


class TrainingDiverged(JaxAudioError):
  """The loss became NaN or infinite."""


def _writer(workdir: str):
  """clu writer (TensorBoard on process 0 only); TF is imported here, at the edge."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")  # TF must not take accelerator memory from JAX
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  return metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"),
                                              just_logging=jax.process_index() > 0)


def _score_name(cfg, multi_label: bool) -> str:
  if cfg.train.best_metric != "auto":
    return cfg.train.best_metric
  return "mAP" if multi_label else "macro_f1"


def _scores(pred: dict[str, np.ndarray], num_classes: int, multi_label: bool) -> dict[str, Any]:
  if multi_label:
    return MultiLabelScores.from_model_output(logits=pred["logits"], labels=pred["label"]).compute()
  return ConfusionMatrix.empty(num_classes).merge(ConfusionMatrix.from_model_output(
      logits=pred["logits"], labels=pred["label"])).compute()


def _initial_variables(cfg, info, has_checkpoint: bool):
  if has_checkpoint or cfg.model.init == "scratch":
    return None  # a checkpoint of our own always wins over pretrained weights
  source = cfg.model.checkpoint or None if cfg.model.init == "pretrained" else cfg.model.init
  variables, meta = pretrained_variables(info, source)
  log.info("initialised the backbone from %s (sha256 %s)", meta.get("source"),
               str(meta.get("source_sha256"))[:12])
  return variables


def train_and_evaluate(cfg, workdir: str) -> dict[str, Any]:
  """Run (or continue) the configured fine-tuning in `workdir`; returns the test report."""
  configs.validate(cfg)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  info = get_model(cfg.model.name)
  prepared, _ = prepare(cfg.data, info.spec, progress=jax.process_index() == 0)
  classes, multi_label = prepared.classes, prepared.multi_label
  mgr = checkpointing.manager(workdir, int(cfg.train.checkpoint_keep))
  latest = mgr.latest_step()
  pmap = cfg.parallel == "pmap"
  setup = factory.build(info, len(classes), cfg.train,
                        pretrained=_initial_variables(cfg, info, latest is not None),
                        widths=tuple(cfg.model.widths) or None,
                        bn_axis_name=parallel.PMAP_AXIS if pmap else None)
  step_cfg = steps.StepConfig(
      model=setup.model, tx=setup.tx, trainable=setup.trainable, num_classes=len(classes),
      multi_label=multi_label, augment=cfg.train.augment, spec=info.spec,
      silence=silence_value(info.spec), axis_name=parallel.PMAP_AXIS if pmap else None)
  par = parallel.make(cfg.parallel, step_cfg)
  iterator = iter(pipeline.train_loader(prepared, "train", int(cfg.train.batch_size),
                                        seed=int(cfg.data.shuffle_seed),
                                        worker_count=int(cfg.data.loader_workers)))
  meta = {"best_score": -math.inf, "best_step": -1, "evals_without_improvement": 0}
  template = checkpointing.to_host(setup.state)  # device buffers are donated to the step
  host_state = template
  if latest is not None:
    host_state, meta = checkpointing.restore(mgr, latest, template, iterator)
    log.info("resumed from step %d in %s", latest, workdir)
  state = par.put_state(host_state)
  step = int(np.asarray(host_state.step))
  num_steps = int(cfg.train.num_steps)
  score_name = _score_name(cfg, multi_label)
  writer = _writer(workdir)
  if latest is None:
    writer.write_hparams({k: str(v) for k, v in _flatten(cfg.to_dict()).items()})
  from clu import periodic_actions  # pylint: disable=import-outside-toplevel
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                             every_secs=60)
  window = []
  start = time.perf_counter()
  while step < num_steps:
    batch = next(iterator)
    state, metrics = par.train_step(state, pipeline.device_batch(batch, cfg.parallel, par.mesh))
    step += 1
    window.append(metrics)
    progress(step)
    if step % int(cfg.train.log_every) == 0 or step == num_steps:
      host = jax.device_get(window)
      window = []
      means = {f"train_{k}": float(np.mean([np.mean(m[k]) for m in host])) for k in host[0]}
      if not math.isfinite(means["train_loss"]):
        last = mgr.latest_step()
        kept = (f"the last good checkpoint (step {last}) is intact" if last is not None
                else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"the training loss became {means['train_loss']} by step {step}; {kept}; lower "
            "train.learning_rate or train.grad_clip_norm and run the same command again.")
      means.update({f"lr_{g}": float(s(step)) for g, s in setup.schedules.items()})
      writer.write_scalars(step, means)
      log.info("step %d/%d: %s (%.1f steps/s)", step, num_steps,
                   ", ".join(f"{k}={v:.4g}" for k, v in means.items()),
                   step / max(time.perf_counter() - start, 1e-9))
    if step % int(cfg.train.eval_every) == 0 or step == num_steps:
      pred = predict.predict_windows(par.eval_step, state, prepared, "validation",
                                     int(cfg.train.batch_size), cfg.parallel, par.mesh)
      scores = _scores(pred, len(classes), multi_label)
      scalars = {f"eval_{k}": float(v) for k, v in scores.items() if np.ndim(v) == 0}
      scalars["eval_loss"] = float(np.mean(pred["loss"]))
      writer.write_scalars(step, scalars)
      if not multi_label:
        fig = report.confusion_figure(np.asarray(ConfusionMatrix.empty(len(classes)).merge(
            ConfusionMatrix.from_model_output(logits=pred["logits"], labels=pred["label"])
        ).matrix), classes, f"validation, step {step}")
        writer.write_images(step, {"eval_confusion_matrix": report.figure_to_array(fig)[None]})
      score = float(scores[score_name])
      # Ties move "best" to the later step, as orbax's BestN keeps the latest of equals; only
      # a strict improvement resets the early-stopping count.
      improved = score > meta["best_score"]
      if score >= meta["best_score"]:
        meta.update(best_score=score, best_step=step)
      meta["evals_without_improvement"] = 0 if improved else meta["evals_without_improvement"] + 1
      checkpointing.save(mgr, step, par.get_state(state), iterator, meta, score)
      log.info("validation at step %d: %s=%.4f (best %.4f at step %d)", step, score_name,
                   score, meta["best_score"], meta["best_step"])
      patience = int(cfg.train.early_stop_patience)
      if patience and meta["evals_without_improvement"] >= patience:
        log.info("early stop at step %d: %d validations without improvement", step, patience)
        break
  mgr.wait_until_finished()
  best, _ = checkpointing.restore(mgr, meta["best_step"], template)
  pred = predict.clip_level(predict.predict_windows(
      par.eval_step, par.put_state(best), prepared, "test", int(cfg.train.batch_size),
      cfg.parallel, par.mesh), multi_label)
  test = report.classification_report(pred, classes, multi_label)
  test.update(best_step=meta["best_step"], validation_score={score_name: meta["best_score"]},
              train_seconds=time.perf_counter() - start)
  if jax.process_index() == 0:
    report.write_test_report(workdir, test, classes)
    writer.write_scalars(step, {f"test_{k}": float(v) for k, v in test.items()
                                if k in ("accuracy", "macro_f1", "mAP", "micro_f1")})
  writer.flush()
  mgr.close()
  return test


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
