"""Converted weights on disk: one orbax checkpoint with the arrays and their metadata.

Layout: DIR/state (params + batch_stats, orbax StandardSave) and DIR/meta (JSON: model
name, FrontendSpec, source file and sha256), so a checkpoint is never separated from the
frontend its weights expect.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

import jaxaudio
from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.models.registry import ModelInfo, param_count

FORMAT = "jaxaudio.converted/1"


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def is_converted(path: str | os.PathLike) -> bool:
  return os.path.isdir(os.path.join(path, "meta")) and os.path.isdir(os.path.join(path, "state"))


def save_converted(path: str | os.PathLike, info: ModelInfo, variables: dict[str, Any],
                   source: str, source_sha256: str) -> dict[str, Any]:
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and os.listdir(path) and not is_converted(path):
    raise CheckpointError(f"{path} exists and is not a jaxaudio converted checkpoint; choose an "
                          "empty or new --out directory.")
  meta = {
      "format": FORMAT, "model": info.name, "frontend_spec": info.spec.to_dict(),
      "frontend_fingerprint": info.spec.fingerprint(), "source": os.path.basename(os.path.normpath(source)),
      "license": info.license,
      "source_sha256": source_sha256, "param_count": param_count(variables["params"]),
      "jaxaudio_version": jaxaudio.__version__,
  }
  _checkpointer().save(path, ocp.args.Composite(state=ocp.args.StandardSave(variables),
                                                meta=ocp.args.JsonSave(meta)), force=True)
  return meta


def load_converted(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables, meta) of a converted checkpoint; the FrontendSpec is checked to parse."""
  path = os.path.abspath(os.fspath(path))
  if not is_converted(path):
    raise CheckpointError(f"{path} is not a jaxaudio converted checkpoint (no state/ and meta/); "
                          "create one with `python -m jaxaudio.convert`.")
  try:
    restored = _checkpointer().restore(path, ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  except Exception as err:  # orbax raises many types for damaged directories
    raise CheckpointError(f"{path}: cannot restore the converted checkpoint ({err}); convert "
                          "the weights again.") from err
  meta = restored["meta"]
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}; convert "
                          "the weights again with this jaxaudio.")
  FrontendSpec.from_dict(meta["frontend_spec"])
  return dict(restored["state"]), meta
