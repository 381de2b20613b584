"""meta.json of an ONNX, SavedModel or TFLite export: what a runtime needs to feed the graph
(sample rate, window and hop in samples, the FrontendSpec, the input's name and shape), what
its outputs mean (class names, multi-label, validation thresholds), what the graph leaves
to the caller, and a model card: the data it was fine-tuned on, its test metrics and the
licence of the pretrained weights it started from.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.exports import contract, frontend_graph


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _metrics(workdir: str) -> dict[str, Any]:
  """The run's test metrics: the evaluation report (python -m jaxaudio.evaluate, or the
  run's end), else the trainer's test report; without either, a sentence saying so."""
  evaluation = _read_json(os.path.join(workdir, "report", "evaluation.json"))
  if evaluation and "classification" in evaluation:
    cls = evaluation["classification"]
    keys = ("accuracy", "macro_f1", "mAP", "ece", "num_examples")
    return {"source": "report/evaluation.json", "split": evaluation.get("split", "test"),
            "step": evaluation.get("step"), **{k: cls[k] for k in keys if k in cls}}
  trainer = _read_json(os.path.join(workdir, "report", "test_metrics.json"))
  if trainer:
    keys = ("accuracy", "macro_f1", "mAP", "num_examples", "best_step")
    return {"source": "report/test_metrics.json", "split": "test",
            **{k: trainer[k] for k in keys if k in trainer}}
  return {"source": None, "note": "the run has no test report; run python -m "
                                  "jaxaudio.evaluate --workdir=RUN and export again"}


def model_card(run, splits: dict[str, Any] | None) -> dict[str, Any]:
  """Data, metrics and pretrained weights of a jaxaudio.runs.rundir.TrainedRun; `splits` is
  the prepared data's {split: {clips, windows}} (None when it could not be opened)."""
  info, cfg = run.info, run.cfg
  data = {"source": str(cfg.data.source), "classes": list(run.classes),
          "multi_label": bool(run.multi_label)}
  if splits:
    data["splits"] = {name: {"clips": int(s["clips"]), "windows": int(s["windows"])}
                      for name, s in splits.items()}
  init = str(cfg.model.init)
  pretrained = {"model": info.name, "description": info.description, "init": init,
                "license": info.license or "not recorded: see docs/reference/models.md"}
  if init == "scratch":
    pretrained["license"] = "none: trained from a seeded initialisation, no pretrained weights"
  metrics = _metrics(run.workdir) if run.step else {
      "source": None, "note": "the weights the run started from (--step=start): the run's "
                              "test metrics are those of its fine-tuned checkpoints"}
  return {"model": info.name, "step": int(run.step), "data": data, "metrics": metrics,
          "pretrained_weights": pretrained}


def meta(*, fmt: str, input_kind: str, quantize: str, spec: FrontendSpec,
         settings: dict[str, Any], classes: list[str], multi_label: bool, embedding_dim: int,
         batch: int | None, thresholds: dict[str, float] | None = None,
         card: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
         ) -> dict[str, Any]:
  """The meta.json of one export."""
  window = (frontend_graph.window_samples(spec),) if input_kind == "audio" else (
      spec.frames_per_window, spec.n_mels)
  b = batch if batch is not None else -1
  out = {
      "format_version": contract.FORMAT_VERSION, "format": fmt, "file": contract.FILES[fmt],
      "quantize": quantize,
      "input": {"name": input_kind, "shape": [b, *window], "dtype": "float32"},
      "outputs": {"probabilities": [b, len(classes)], "embeddings": [b, embedding_dim]},
      "batch": "any" if batch is None else batch,
      "sample_rate": spec.sample_rate,
      "window_samples": frontend_graph.window_samples(spec),
      "hop_samples": frontend_graph.hop_samples(spec, float(settings["window_hop"])),
      "classes": list(classes), "multi_label": bool(multi_label),
      "embedding_dim": int(embedding_dim), "frontend": spec.to_dict(), "settings": settings,
      "not_in_graph": list(contract.NOT_IN_AUDIO_GRAPH if input_kind == "audio"
                           else contract.NOT_IN_MEL_GRAPH),
  }
  if thresholds is not None:
    out["thresholds"] = dict(thresholds)
  if card is not None:
    out["model_card"] = card
  out.update(extra or {})
  return out
