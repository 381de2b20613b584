"""What a model's logits mean: probabilities, clip means, per-class thresholds; fixed-size batches.

Shared by training-time validation, evaluation, prediction and search, so every path turns
window logits into clip scores the same way (softmax for single-label models, sigmoid for
multi-label ones; a clip is the mean of its windows)."""

from __future__ import annotations
from typing import Callable, Sequence
import numpy as np


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows of `x` scaled to unit length (cosine similarity = dot product), in x's own dtype;
  an all-zero row stays zero. Search, retrieval metrics and model selection share it."""
  x = np.asarray(x)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def pow2(n: int) -> int:
  """The smallest power of two >= n (1 for n <= 1)."""
  return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))


def in_batches(fn: Callable[[np.ndarray], np.ndarray], windows: np.ndarray, batch_size: int,
               dim: int) -> np.ndarray:
  """[N, dim] = fn(batch) over [N, frames, mels] windows in batches of exactly `batch_size`
  (the last one zero-padded), so one compiled program serves any N."""
  windows = np.asarray(windows, np.float32)
  out = np.empty((len(windows), dim), np.float32)
  for start in range(0, len(windows), batch_size):
    chunk = windows[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], np.float32)])
    out[start:start + n] = np.asarray(fn(chunk))[:n]
  return out


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
  """Window probabilities (float64): sigmoid per class, or softmax over classes."""
  logits = np.asarray(logits, np.float64)
  if multi_label:
    return 1.0 / (1.0 + np.exp(-logits))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def group_mean(probs: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(sorted unique groups, mean probability row per group, index of each group's first row)."""
  keys, inverse = np.unique(groups, return_inverse=True)
  summed = np.zeros((len(keys), probs.shape[-1]))
  np.add.at(summed, inverse, probs)
  first = np.zeros(len(keys), int)
  first[inverse[::-1]] = np.arange(len(inverse))[::-1]
  return keys, summed / np.bincount(inverse)[:, None], first


def thresholds_array(classes: Sequence[str], value: float | dict[str, float]) -> np.ndarray:
  """Per-class thresholds from one number or a {class: threshold} mapping (every class)."""
  if isinstance(value, dict):
    missing = [c for c in classes if c not in value]
    if missing:
      raise ValueError(f"the thresholds name no value for {missing[:5]}; give every class one.")
    return np.asarray([float(value[c]) for c in classes])
  return np.full(len(classes), float(value))
