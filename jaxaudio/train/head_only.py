"""Frozen-backbone fast path: embed every window once, then train the head on the cache.

While no backbone parameter trains (a head-only run, or the head-only first stages of a
gradual-unfreezing plan: linear probing before fine-tuning), the backbone is a fixed
function (BatchNorm on running averages, no dropout), so running it at every step only
repeats work. The loop instead embeds the train, validation and test windows once with the
full model in evaluation mode and trains `HeadOnlyClassifier` (the same `head/...`
parameters) on the cached embeddings, with the same optimizer, checkpoints and reports;
when a later stage unfreezes backbone blocks, training moves to the full model on log-mels.

Input-space augmentation (SpecAugment, gain, time shift) cannot act on a cached embedding;
mixup still applies, in embedding space. Set train.cache_embeddings="off" to train a frozen
backbone the slow way with every augmentation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from jaxaudio.train import forward
from jaxaudio.models.head import HeadOnlyClassifier
from jaxaudio.train import optimizer, stages

SPLITS = ("train", "validation", "test")


def cached_stage(train_cfg, params: Any, rules) -> bool:
  """True when train.cache_embeddings allows it and these rules freeze the whole backbone."""
  if train_cfg.cache_embeddings == "off":
    return False
  return all(group == optimizer.FROZEN
             for path, group in optimizer.assign_groups(params, rules).items()
             if path.startswith("backbone/"))


def applies(train_cfg, params: Any, plan: stages.Plan) -> bool:
  """True when every stage of the run trains on cached embeddings (no backbone training)."""
  return all(cached_stage(train_cfg, params, rules) for rules in plan.rules)


class ArraySource:
  """Random-access records {"mel": embedding, "label", "clip"} over in-memory arrays; the
  pipeline's grain loader and eval batches read it like a prepared split."""

  def __init__(self, arrays: dict[str, np.ndarray], split: str):
    self._arrays, self._split = arrays, split

  def __repr__(self) -> str:
    # grain compares repr(data_source) on restore: name what is read, not where in memory.
    return (f"ArraySource(split={self._split}, windows={len(self)}, "
            f"dim={self._arrays['embedding'].shape[-1]})")

  def __len__(self) -> int:
    return len(self._arrays["clip"])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"mel": self._arrays["embedding"][index], "label": self._arrays["label"][index],
            "clip": self._arrays["clip"][index]}


@dataclasses.dataclass
class EmbeddingCache:
  """Embeddings of every window per split; duck-types data.prepare.Prepared for the
  pipeline (data_source, multi_label, classes)."""

  splits: dict[str, dict[str, np.ndarray]]
  classes: list[str]
  multi_label: bool

  def data_source(self, split: str) -> ArraySource:
    return ArraySource(self.splits[split], split)


def embed_splits(eval_step: Callable, state: Any, prepared, batch_size: int, parallel: str,
                 mesh=None) -> EmbeddingCache:
  """Run the full model (evaluation mode) once over every window of each split."""
  splits = {}
  for split in SPLITS:
    out = forward.predict_windows(eval_step, state, prepared, split, batch_size, parallel, mesh,
                                  keys=("embedding",))
    out["embedding"] = out["embedding"].astype(np.float32)
    splits[split] = out
  return EmbeddingCache(splits, prepared.classes, prepared.multi_label)


def shared_cache_path(directory: str, cfg, prepared) -> str:
  """Where the initial backbone's embeddings of `prepared` are kept in `directory`: the key
  is everything that changes them (model, weights, data, batch size, precision, devices),
  so runs sharing the file would each have computed the same arrays."""
  m, t = cfg.model, cfg.train
  key = {"model": m.name, "init": m.init, "checkpoint": m.checkpoint,
         "widths": list(m.widths), "data": os.path.basename(prepared.root),
         "batch_size": int(t.batch_size), "mixed_precision": bool(t.mixed_precision),
         "parallel": cfg.parallel, "devices": jax.device_count(),
         "seed": int(t.seed) if m.init == "scratch" else None}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(directory, f"embeddings-{m.name}-{digest}.npz")


def load_cache(path: str, prepared) -> EmbeddingCache | None:
  """The cache saved at `path`, or None when no run has written it yet."""
  if not os.path.isfile(path):
    return None
  with np.load(path) as z:
    splits = {s: {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{s}/")}
              for s in SPLITS}
  return EmbeddingCache(splits, prepared.classes, prepared.multi_label)


def save_cache(path: str, cache: EmbeddingCache) -> None:
  """Write under a temporary name and rename, so a reader never sees half a file (several
  sweep workers may write the same one; they write the same arrays)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **{f"{s}/{k}": v for s, arrays in cache.splits.items() for k, v in arrays.items()})
  os.replace(tmp, path)


def head_model(train_cfg, num_classes: int) -> HeadOnlyClassifier:
  return HeadOnlyClassifier(num_classes, dropout=float(train_cfg.head_dropout))


def augment_config(augment_cfg) -> ml_collections.ConfigDict:
  """The run's augmentation with only what works on embeddings (mixup) left on."""
  cfg = ml_collections.ConfigDict(augment_cfg.to_dict())
  cfg.time_masks = cfg.freq_masks = 0
  cfg.gain_db = cfg.time_shift = 0.0
  return cfg
