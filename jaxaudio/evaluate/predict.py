"""Run a model over a prepared split: window logits, then clip-level aggregation."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jaxaudio import inference
from jaxaudio.data import pipeline
from jaxaudio.data.prepare import Prepared


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
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
  """`keys` of step(batch), label and clip of every unmasked row of `batches`."""
  out = {k: [] for k in keys + ("label", "clip")}
  for batch in batches:
    res = step(batch)
    keep = batch["mask"] > 0
    for k in keys:
      v = _to_host(res[k])
      out[k].append(v.reshape((-1,) + v.shape[2:] if pmap else v.shape)[keep])
    out["label"].append(batch["label"][keep])
    out["clip"].append(batch["clip"][keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def clip_level(windows: dict[str, np.ndarray], multi_label: bool) -> dict[str, np.ndarray]:
  """Average each clip's window probabilities; back to logits so metrics read them alike."""
  clips, mean, first = inference.group_mean(
      inference.probabilities(windows["logits"], multi_label), windows["clip"])
  eps = 1e-12
  agg = (np.log(mean + eps) - np.log1p(-mean + eps)) if multi_label else np.log(mean + eps)
  return {"logits": agg, "label": windows["label"][first], "clip": clips}
