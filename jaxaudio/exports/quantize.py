"""Quantisation's data: calibration windows from the run's training split, and the
accuracy change on its test split (window level, quantised artefact against the float
model), which the command prints and meta.json keeps."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jaxaudio.data import pipeline

CALIBRATION_WINDOWS = 128


def split_windows(prepared, split: str, limit: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(mel [N, frames, mels] float32, labels) of the first `limit` windows of `split`."""
  mels, labels = [], []
  for batch in pipeline.eval_batches(prepared, split, 32, 0, 1):
    real = batch["mask"] > 0
    mels.append(np.asarray(batch["mel"], np.float32)[real])
    labels.append(np.asarray(batch["label"])[real])
    if limit and sum(len(m) for m in mels) >= limit:
      break
  mel, label = np.concatenate(mels), np.concatenate(labels)
  return (mel[:limit], label[:limit]) if limit else (mel, label)


def calibration(prepared, limit: int = CALIBRATION_WINDOWS) -> np.ndarray:
  """Training windows, evenly spread over the split, for the int8 calibration."""
  mel, _ = split_windows(prepared, "train")
  if len(mel) > limit:
    mel = mel[np.linspace(0, len(mel) - 1, limit).round().astype(int)]
  return mel


def _decisions(probs: np.ndarray, multi_label: bool) -> np.ndarray:
  return probs >= 0.5 if multi_label else probs.argmax(-1)


def _accuracy(probs: np.ndarray, labels: np.ndarray, multi_label: bool) -> float:
  """Single-label: top-1 accuracy; multi-label: accuracy of every (window, class) decision
  at 0.5."""
  if multi_label:
    return float(np.mean((probs >= 0.5) == labels.astype(bool)))
  return float(np.mean(probs.argmax(-1) == labels))


def report(float_fn: Callable[[np.ndarray], np.ndarray], quantised_fn: Callable[[np.ndarray],
           np.ndarray], mel: np.ndarray, labels: np.ndarray, multi_label: bool,
           quantize: str, calibration_windows: int) -> dict[str, Any]:
  """Window-level accuracy of the float model and the quantised artefact on `mel` (both give
  probabilities [N, C]), their change, and how often their decisions agree."""
  ref = np.asarray(float_fn(mel), np.float64)
  got = np.asarray(quantised_fn(mel), np.float64)
  acc_float = _accuracy(ref, labels, multi_label)
  acc_quant = _accuracy(got, labels, multi_label)
  return {"quantize": quantize, "calibration": {"split": "train",
                                                "windows": int(calibration_windows)},
          "test_windows": int(len(mel)),
          "metric": "accuracy at 0.5" if multi_label else "top-1 accuracy",
          "float": acc_float, "quantized": acc_quant, "change": acc_quant - acc_float,
          "agreement": float(np.mean(_decisions(ref, multi_label)
                                     == _decisions(got, multi_label))),
          "max_abs_probability_diff": float(np.abs(ref - got).max())}

