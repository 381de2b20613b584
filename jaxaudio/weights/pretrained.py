"""Pretrained variables for a model: convert the original once, then reuse the cache.

Cache key: model name + sha256 of the original file, so a different file never reuses a
conversion. The trainer and `embed` both come through here.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

from jaxaudio.models.registry import ModelInfo
from jaxaudio.weights import convert, pth, sources, store, tfckpt

log = logging.getLogger("jaxaudio")


def convert_file(info: ModelInfo, path: str) -> dict[str, Any]:
  """Original .pth (or TF1 checkpoint folder) -> Flax variables (no caching)."""
  if info.original_format == "tf1":
    return convert.convert_state_dict(info, tfckpt.read_variables(path), path)
  return convert.convert_state_dict(info, convert.extract_state_dict(pth.load_pth(path), path),
                                    path)


def convert_to(info: ModelInfo, out: str, checkpoint: str | None = None) -> dict[str, Any]:
  """Convert the original weights of `info` into an orbax checkpoint at `out`; returns meta."""
  path, digest = sources.resolve_original(info, checkpoint)
  start = time.perf_counter()
  variables = convert_file(info, path)
  meta = store.save_converted(out, info, variables, path, digest)
  meta["convert_seconds"] = time.perf_counter() - start
  return meta


def pretrained_variables(info: ModelInfo, checkpoint: str | None = None
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables, meta) of the pretrained backbone; `checkpoint` may be an original .pth or a
  converted directory. Conversions are cached under <cache>/converted/<model>-<sha256>."""
  if checkpoint and store.is_converted(checkpoint):
    return store.load_converted(checkpoint)
  path, digest = sources.resolve_original(info, checkpoint)
  cached = os.path.join(sources.cache_dir(), "converted", f"{info.name}-{digest[:16]}")
  if not store.is_converted(cached):
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(cached), prefix=".tmp-")
    try:
      store.save_converted(os.path.join(tmp, "ckpt"), info, convert_file(info, path), path,
                           digest)
      if not store.is_converted(cached):
        os.replace(os.path.join(tmp, "ckpt"), cached)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return store.load_converted(cached)


def initial_variables(cfg, info: ModelInfo, has_checkpoint: bool) -> dict[str, Any] | None:
  """The starting weights a run's config asks for (model.init: pretrained, with an optional
  model.checkpoint, or a path), or None for scratch and for a run that has checkpoints of
  its own (they always win over pretrained weights)."""
  if has_checkpoint or cfg.model.init == "scratch":
    return None
  source = cfg.model.checkpoint or None if cfg.model.init == "pretrained" else cfg.model.init
  variables, meta = pretrained_variables(info, source)
  log.info("initialised the backbone from %s (sha256 %s)", meta.get("source"),
           str(meta.get("source_sha256"))[:12])
  return variables
