"""Forward passes over prepared splits: every window once, on every process, then clip-level
aggregation. Below both the trainer (validation, the probe's embedding cache) and the
evaluation, which run the same batches the same way."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxaudio.models import outputs
from jaxaudio.data import pipeline
from jaxaudio.data.prepare import Prepared


def _process_rows(x) -> np.ndarray:
  """This process's rows of a step output as numpy, in global order: the addressable shards
  of a global jax.Array sharded along its first axis, else the whole array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = {s.index[0].start or 0: s for s in x.addressable_shards}   # replicas once
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])
  return np.asarray(x)


def predict_windows(eval_step: Callable, state: Any, prepared: Prepared, split: str,
                    batch_size: int, parallel: str, mesh=None,
                    keys: tuple[str, ...] = ("logits", "loss")) -> dict[str, np.ndarray]:
  """`keys` of eval_step's output (logits, loss, embedding), label and clip id of every
  window of `split`, each exactly once, in the split's order."""
  return collect(lambda b: eval_step(state, pipeline.device_batch(b, parallel, mesh)),
                 pipeline.eval_batches(prepared, split, batch_size), keys,
                 pmap=parallel == "pmap")


def collect(step: Callable, batches, keys: tuple[str, ...], pmap: bool = False
            ) -> dict[str, np.ndarray]:
  """`keys` of step(batch), label and clip of every unmasked row of `batches`.

  With several processes each holds its slice of every global batch (pipeline.padded_batches);
  the slices are gathered to every process, so all of them return the whole split, in order.
  """
  out = {k: [] for k in keys + ("label", "clip")}
  for batch in batches:
    res = step(batch)
    rows = {k: _process_rows(res[k]) for k in keys}
    if pmap:   # [local devices, per device, ...] -> rows
      rows = {k: v.reshape((-1,) + v.shape[2:]) for k, v in rows.items()}
    rows.update(label=batch["label"], clip=batch["clip"], mask=batch["mask"])
    if jax.process_count() > 1:
      rows = jax.tree_util.tree_map(np.asarray,
                                    multihost_utils.process_allgather(rows, tiled=True))
    keep = rows["mask"] > 0
    for k in out:
      out[k].append(rows[k][keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def clip_level(windows: dict[str, np.ndarray], multi_label: bool) -> dict[str, np.ndarray]:
  """Average each clip's window probabilities; back to logits so metrics read them alike."""
  clips, mean, first = outputs.group_mean(
      outputs.probabilities(windows["logits"], multi_label), windows["clip"])
  eps = 1e-12
  agg = (np.log(mean + eps) - np.log1p(-mean + eps)) if multi_label else np.log(mean + eps)
  return {"logits": agg, "label": windows["label"][first], "clip": clips}
