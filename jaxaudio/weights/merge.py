"""Put pretrained backbone tensors into a freshly initialised fine-tuning model."""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import traverse_util

from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.models.registry import ModelInfo


def merge_pretrained(fresh: dict[str, Any], pretrained: dict[str, Any], info: ModelInfo,
                     prefix: str = "backbone") -> dict[str, Any]:
  """Replace fresh[collection][prefix] with the pretrained tensors; keep everything else.

  Subtrees in info.pretrained_only (the original AudioSet head, say) may be dropped; any other
  missing, unexpected or wrongly shaped tensor is a CheckpointError listing its names.
  """
  fresh_flat = traverse_util.flatten_dict(fresh)
  pre_flat = {(k[0], prefix) + k[1:]: v
              for k, v in traverse_util.flatten_dict(pretrained).items()}
  target = {k for k in fresh_flat if len(k) > 1 and k[1] == prefix}
  missing = sorted("/".join(k) for k in target - pre_flat.keys())
  unexpected = sorted("/".join(k) for k in pre_flat.keys() - target
                      if not (len(k) > 2 and k[2] in info.pretrained_only))
  wrong = sorted(f"{'/'.join(k)} {np.shape(pre_flat[k])} vs {np.shape(fresh_flat[k])}"
                 for k in target & pre_flat.keys()
                 if np.shape(pre_flat[k]) != np.shape(fresh_flat[k]))
  if missing or unexpected or wrong:
    parts = [f"{label}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
             for label, names in (("missing", missing), ("unexpected", unexpected),
                                  ("wrong shape", wrong)) if names]
    raise CheckpointError(f"pretrained {info.name} weights do not fit the model ("
                          f"{'; '.join(parts)}); build the model with the same architecture "
                          "and widths as the checkpoint.")
  merged = dict(fresh_flat)
  for k in target:
    merged[k] = np.asarray(pre_flat[k], dtype=np.asarray(fresh_flat[k]).dtype)
  return traverse_util.unflatten_dict(merged)
