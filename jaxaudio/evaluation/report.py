"""What a run reports: DIR/report/test_metrics.json, confusion_matrix.png, the figures, and
the TensorBoard writer every command that reports on a run shares."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from jaxaudio.evaluation import metrics
from jaxaudio.runtime.bundle import write_bundle


def summary_writer(workdir: str):
  """clu writer into WORKDIR/tensorboard (process 0 writes; the others only log); TF is
  imported here, at the edge."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")  # TF must not take accelerator memory from JAX
  from clu import metric_writers  # pylint: disable=import-outside-toplevel
  return metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"),
                                              just_logging=jax.process_index() > 0)


def classification_report(predictions: dict[str, np.ndarray], classes: list[str],
                          multi_label: bool) -> dict[str, Any]:
  if multi_label:
    s = metrics.MultiLabelScores.from_model_output(logits=predictions["logits"],
                                                   labels=predictions["label"]).compute()
    return {"mAP": s["mAP"], "micro_f1": s["micro_f1"], "num_examples": s["num_examples"],
            "per_class": {c: {"average_precision": float(ap)}
                          for c, ap in zip(classes, s["average_precision"])}}
  cm = metrics.ConfusionMatrix.empty(len(classes)).merge(metrics.ConfusionMatrix.from_model_output(
      logits=predictions["logits"], labels=predictions["label"]))
  s = cm.compute()
  return {"accuracy": s["accuracy"], "macro_precision": s["macro_precision"],
          "macro_recall": s["macro_recall"], "macro_f1": s["macro_f1"],
          "num_examples": s["num_examples"],
          "per_class": {c: {"precision": float(s["precision"][i]), "recall": float(s["recall"][i]),
                            "f1": float(s["f1"][i]), "support": int(s["support"][i])}
                        for i, c in enumerate(classes)},
          "confusion_matrix": cm.matrix.tolist()}


def pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str):
  matrix = np.asarray(matrix)
  plt = pyplot()
  n = len(classes)
  fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.6 + 0.45 * n), dpi=100)
  norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(n), classes, fontsize=8)
  for i in range(n):
    for j in range(n):
      if matrix[i, j]:
        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def logmel_figure(mels: list[np.ndarray], titles: list[str], suptitle: str):
  """Log-mel windows ([frames, mels], normalised) side by side, time left to right."""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(mels), figsize=(3.2 * len(mels), 2.8), dpi=100,
                           squeeze=False)
  for ax, mel, title in zip(axes[0], mels, titles):
    ax.imshow(np.asarray(mel, np.float32).T, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("frame", fontsize=7)
    ax.set_ylabel("mel band", fontsize=7)
    ax.tick_params(labelsize=6)
  fig.suptitle(suptitle, fontsize=9)
  fig.tight_layout()
  return fig


def figure_to_array(fig) -> np.ndarray:
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.close(fig)
  return image


def write_test_report(workdir: str, report: dict[str, Any], classes: list[str]) -> str:
  out = os.path.join(workdir, "report")
  figures = {}
  if "confusion_matrix" in report:
    figures["confusion_matrix"] = confusion_figure(
        np.array(report["confusion_matrix"]), classes,
        f"test (per clip): accuracy {report['accuracy']:.3f}, macro F1 {report['macro_f1']:.3f}")
  write_bundle(out, "test_metrics", report, figures=figures)
  for fig in figures.values():
    pyplot().close(fig)
  return out
