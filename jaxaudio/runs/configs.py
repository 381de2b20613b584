"""The one place for config defaults and their validation.

Config files under configs/ start from `base_config()` and change what they need; every key
is documented in docs/reference/config.md. `validate()` runs before any work, so a bad value is one sentence
naming the key instead of a failure an hour into a run.
"""

from __future__ import annotations

import math
import os

import ml_collections

from jaxaudio.runtime.errors import ConfigError
from jaxaudio.models.registry import DEFAULT_FROZEN, get_model
from jaxaudio.train import stages


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({
      "name": "aisfx",            # registry name: aisfx, panns_cnn14/10/6, musicnn_msd/mtt,
                                  # vgg_msd/mtt (python -m jaxaudio.select ranks them)
      "init": "pretrained",       # pretrained | scratch | path to a converted checkpoint
      "checkpoint": "",           # original .pth (PANNs need it; aiSFX finds its own)
      "widths": (),               # override block widths (tests use tiny ones; scratch only)
  })
  c.data = ml_collections.ConfigDict({
      "source": "demo",           # folder:PATH | csv:PATH | tfds:NAME | demo
      "prepared_dir": "",         # default <cache>/prepared
      "val_fraction": 0.15,       # carved from train (stratified, seeded) when a split is missing
      "test_fraction": 0.15,
      "split_seed": 0,
      # Groups (speaker, session, room, instrument, source recording) make every carved split
      # group-disjoint: "" (none; a CSV's `group` column is used if it has one),
      # column:NAME (a CSV column) or regex:PATTERN (over paths relative to the source; the
      # first capture group names the group).
      "group": "",
      "validation_folds": (4,),   # csv sources with a `fold` column (ESC-50)
      "test_folds": (5,),
      # K-fold cross-validation (python -m jaxaudio.evaluate --folds=K sets these): clip folds
      # come from a CSV's `fold` column, else a seeded stratified split of every clip; fold
      # cv_fold (1-based) is the test split and validation is carved from the others.
      "cv_folds": 0,
      "cv_fold": 0,
      "csv_audio_dir": "",        # base of relative paths in a CSV (default: beside the CSV,
                                  # or ../audio as ESC-50 lays it out)
      "loudness": "peak",         # peak | rms | none
      "loudness_db": -1.0,        # peak dBFS, or RMS dBFS with loudness=rms
      "denoise": 0.0,             # spectral gating strength 0..1 (0 = off)
      "trim_db": 0.0,             # trim leading/trailing silence below this (0 = off)
      "window_hop": 0.5,          # overlap of windows cut from long clips (fraction of a window)
      "min_seconds": 0.1,         # shorter files are skipped and reported
      "max_seconds": 3600.0,      # longer files are refused before decoding (memory bound:
                                  # ~4 bytes per sample at the model's rate); 0 = no limit
      "strict": False,            # stop at the first bad file instead of skipping it
      "workers": 0,               # preparation processes (0 = auto: every core from 4 up)
      "loader_workers": 0,        # grain worker processes feeding training (0 = in-process)
      "shuffle_seed": 0,
      "demo": ml_collections.ConfigDict({
          "seed": 0, "seconds": 3.0, "sample_rate": 44100,
          "clips_per_class": {"train": 24, "validation": 6, "test": 8},
      }),
      "tfds": ml_collections.ConfigDict({
          "data_dir": "", "audio_key": "audio", "label_key": "label", "sample_rate": 0,
          "download": False,
          "splits": {"train": "train", "validation": "validation", "test": "test"},
      }),
  })
  c.train = ml_collections.ConfigDict({
      "seed": 0,
      # The default recipe (bench/recipes.py, docs/evidence/recipes.md): the
      # last three blocks and a fresh head trained together from the start, Adam at a constant
      # learning rate, six epochs, no augmentation, no probe.
      "num_steps": 0,             # 0: probe_steps + epochs x train windows / batch_size
      "epochs": 6.0,              # used when num_steps is 0, once the data is prepared
      "batch_size": 32,           # global batch, split over processes and devices
      "learning_rate": 3e-4,      # times group_lr_mult per group
      # Ordered (regex over parameter paths, group); first match wins, all must match.
      # The first rule freezes each model's first layer groups (registry.DEFAULT_FROZEN: aiSFX
      # block1, PANNs bn0+block1, musicnn frontend, vgg block1).
      "param_groups": ((f"^backbone/({'|'.join(DEFAULT_FROZEN)})/", "frozen"),
                       ("^backbone/", "backbone"),
                       ("^head/", "head")),
      "group_lr_mult": {"head": 1.0, "backbone": 1.0},
      # Linear probing first: the head alone (on cached embeddings) for this many steps,
      # then param_groups apply; 0 = off.
      "probe_steps": 0,
      # Gradual unfreezing: (step, regex, group) entries; from `step` on, parameters matching
      # `regex` belong to `group` (ahead of param_groups). Optimizer state of parameters
      # already training is kept. E.g. ((50, "^backbone/block4/", "backbone"),).
      "unfreeze": (),
      # auto: when no backbone parameter trains at any stage, embed every window once and
      # train the head on the cached embeddings (mixup only); off: full forward each step.
      "cache_embeddings": "auto",
      "warmup_steps": 0,
      "final_lr_fraction": 1.0,   # cosine decay to this fraction of the peak (1.0: constant)
      "weight_decay": 0.0,        # AdamW, kernels only
      "adam_b1": 0.9, "adam_b2": 0.999, "adam_eps": 1e-8,
      "grad_clip_norm": 0.0,      # over trainable leaves; 0 = off
      "log_every": 20,            # steps between train scalars / console lines
      "eval_every": 50,           # steps between validation passes (and checkpoints)
      "checkpoint_keep": 2,       # latest checkpoints kept, besides the best one
      "best_metric": "auto",      # validation score for best/early stop: auto = macro_f1,
                                  # or mAP for multi-label; or accuracy, micro_f1
      "early_stop_patience": 0,   # validation passes without improvement; 0 = off
      "head_dropout": 0.0,
      # BatchNorm of trainable blocks: batch (normalise with batch statistics and update the
      # running averages, PyTorch's train()) or running (keep normalising with the pretrained
      # running averages and leave them untouched, as transfer learning often does).
      "bn": "batch",
      "label_smoothing": 0.0,     # single-label targets (1 - a) one-hot + a / classes
      # Imbalanced data: class_weights=balanced scales each window's loss by
      # windows / (classes x windows of its class) over train; sampling=balanced draws every
      # class equally often per epoch (rare windows repeat). Single-label tasks.
      "class_weights": "none",    # none | balanced
      "sampling": "uniform",      # uniform | balanced
      # Weight averaging: validation, checkpoint selection, the test report and the exported
      # model use an exponential moving average of the weights (decay per step, warmed up
      # as min(decay, (1 + t) / (10 + t))); 0 = off, the weights as trained.
      "ema_decay": 0.0,
      "logmel_images": 4,         # validation log-mel images in TensorBoard per evaluation
      "mixed_precision": False,   # bfloat16 compute, float32 params (GPU/TPU)
      # Off by default: on aiSFX it cost 7 points of test accuracy under a source shift
      # (docs/evidence/recipes.md); mel masks hurt most.
      "augment": ml_collections.ConfigDict({
          "enabled": False,
          "time_masks": 2, "time_mask_width": 10,   # SpecAugment, frames
          "freq_masks": 2, "freq_mask_width": 8,    # SpecAugment, mel bands
          "mixup_alpha": 0.2,                       # 0 = off
          "gain_db": 6.0,                           # random gain within +-gain_db
          "time_shift": 0.1,                        # roll by up to this fraction of a window
      }),
  })
  # At the end of a run the trainer calls python -m jaxaudio.evaluate's code on the test split
  # (DIR/report/evaluation.*: calibration, bootstrap intervals, PR curves, and optionally the
  # retrieval comparison and the robustness sweep, which cost extra forward passes).
  c.evaluate = ml_collections.ConfigDict({
      "at_end": True,
      "retrieval": False,
      "robustness": False,
      "bootstrap": 1000,          # resamples for the 95% intervals; 0 = none
  })
  c.parallel = "jit"              # jit (Mesh + NamedSharding) or pmap
  return c


# Keys added after runs were already being saved, with the value that reproduces how such
# a run trained (which may differ from today's default).
_BEFORE_KEY_EXISTED = {("data", "group"): "", ("train", "epochs"): 0.0, ("train", "bn"): "batch",
                       ("train", "label_smoothing"): 0.0, ("train", "class_weights"): "none",
                       ("train", "sampling"): "uniform", ("train", "ema_decay"): 0.0,
                       # the default limit: it keeps such runs' prepared-data cache key
                       ("data", "max_seconds"): 3600.0}


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A run's config.json as a ConfigDict with every key today's code reads: keys the run
  predates get the value that reproduces its behaviour, so older runs still open."""
  cfg = ml_collections.ConfigDict(saved)
  for (section, key), value in _BEFORE_KEY_EXISTED.items():
    if section in cfg and key not in cfg[section]:
      cfg[section][key] = value
  return cfg


def _check(ok: bool, key: str, value, fix: str) -> None:
  if not ok:
    raise ConfigError(f"config key {key}={value!r} is invalid; {fix}.")


def _floats(c: ml_collections.ConfigDict, prefix: str = ""):
  """(dotted key, value) of every float in the config, nested sections and tuples included."""
  for key, value in c.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _floats(value, f"{name}.")
    elif isinstance(value, dict):
      yield from ((f"{name}.{k}", v) for k, v in value.items() if isinstance(v, float))
    elif isinstance(value, float):
      yield name, value


def validate(c: ml_collections.ConfigDict) -> None:
  """Reject bad values before any work starts."""
  for key, value in _floats(c):
    _check(math.isfinite(value), key, value, "give a finite number")
  get_model(c.model.name)
  d = c.data
  for key in ("val_fraction", "test_fraction"):
    _check(0.0 <= d[key] < 0.5, f"data.{key}", d[key], "use a fraction in [0, 0.5)")
  _check(d.loudness in ("peak", "rms", "none"), "data.loudness", d.loudness,
         "use peak, rms or none")
  _check(-80.0 <= d.loudness_db <= 0.0, "data.loudness_db", d.loudness_db,
         "use a level in dBFS between -80 and 0")
  _check(0.0 <= d.denoise <= 1.0, "data.denoise", d.denoise, "use a strength in [0, 1]")
  _check(0.0 < d.window_hop <= 1.0, "data.window_hop", d.window_hop, "use a fraction in (0, 1]")
  _check(d.cv_folds == 0 or (d.cv_folds >= 2 and 1 <= d.cv_fold <= d.cv_folds), "data.cv_fold",
         (d.cv_folds, d.cv_fold), "use cv_folds >= 2 with 1 <= cv_fold <= cv_folds, or 0 (off)")
  _check(d.min_seconds >= 0.0, "data.min_seconds", d.min_seconds, "use seconds >= 0")
  _check(d.max_seconds == 0 or d.max_seconds > max(d.min_seconds, 0.0), "data.max_seconds",
         d.max_seconds, "use seconds above data.min_seconds, or 0 for no limit")
  _check(d.workers >= 0 and d.loader_workers >= 0, "data.workers", d.workers,
         "use 0 (all cores) or a positive count")
  t = c.train
  _check(t.num_steps >= 0, "train.num_steps", t.num_steps,
         "use a positive step count, or 0 to count steps from train.epochs")
  _check(t.batch_size > 0, "train.batch_size", t.batch_size,
         "use a positive global batch size such as 32")
  _check(t.learning_rate > 0, "train.learning_rate", t.learning_rate,
         "use a positive learning rate such as 3e-4")
  for group, mult in t.group_lr_mult.items():
    _check(mult >= 0, f"train.group_lr_mult.{group}", mult,
           "use a multiplier >= 0 (0 trains the group at no rate)")
  _check(0.0 <= t.final_lr_fraction <= 1.0, "train.final_lr_fraction", t.final_lr_fraction,
         "use a fraction of the peak learning rate in [0, 1]")
  _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "use 0 or a step count")
  _check(t.weight_decay >= 0 and t.grad_clip_norm >= 0, "train.weight_decay",
         (t.weight_decay, t.grad_clip_norm), "use weight_decay and grad_clip_norm >= 0")
  _check(0.0 <= t.adam_b1 < 1.0 and 0.0 <= t.adam_b2 < 1.0 and t.adam_eps > 0,
         "train.adam_b1", (t.adam_b1, t.adam_b2, t.adam_eps),
         "use betas in [0, 1) and adam_eps > 0, e.g. 0.9, 0.999, 1e-8")
  _check(0.0 <= t.head_dropout < 1.0, "train.head_dropout", t.head_dropout,
         "use a rate in [0, 1)")
  _check(t.epochs > 0 or t.num_steps > 0, "train.epochs", t.epochs,
         "give train.epochs > 0 or train.num_steps > 0")
  _check(t.eval_every > 0 and t.log_every > 0, "train.eval_every", t.eval_every,
         "use a positive number of steps")
  _check(t.best_metric in ("auto", "macro_f1", "accuracy", "mAP", "micro_f1"),
         "train.best_metric", t.best_metric, "use auto, macro_f1, accuracy, mAP or micro_f1")
  _check(t.cache_embeddings in ("auto", "off"), "train.cache_embeddings", t.cache_embeddings,
         "use auto or off")
  _check(0 <= t.logmel_images <= 16, "train.logmel_images", t.logmel_images,
         "use a count from 0 to 16")
  _check(t.bn in ("batch", "running"), "train.bn", t.bn, "use batch or running")
  _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", t.label_smoothing,
         "use a value in [0, 1)")
  _check(t.class_weights in ("none", "balanced"), "train.class_weights", t.class_weights,
         "use none or balanced")
  _check(t.sampling in ("uniform", "balanced"), "train.sampling", t.sampling,
         "use uniform or balanced")
  _check(0.0 <= t.ema_decay < 1.0, "train.ema_decay", t.ema_decay,
         "use 0 (off) or a decay in (0, 1) such as 0.99")
  _check(c.parallel in ("jit", "pmap"), "parallel", c.parallel, "use jit or pmap")
  _check(c.model.init in ("pretrained", "scratch") or os.path.exists(c.model.init),
         "model.init", c.model.init, "use pretrained, scratch or the path of a checkpoint")
  _check(c.model.init != "pretrained" or not c.model.checkpoint
         or os.path.exists(os.path.expanduser(c.model.checkpoint)), "model.checkpoint",
         c.model.checkpoint, "no such file; download the original .pth and pass its path")
  _check(not c.model.widths or c.model.init == "scratch", "model.widths", c.model.widths,
         "custom widths only work with model.init=scratch")
  if t.num_steps:   # from epochs, the plan is checked once num_steps is known
    stages.plan(t)
  kind = str(d.source).partition(":")[0]
  _check(kind in ("folder", "csv", "tfds", "demo"), "data.source", d.source,
         "use folder:PATH, csv:PATH, tfds:NAME or demo")
