"""A run (or any jaxaudio model) -> an export directory in the format asked for.

  python -m jaxaudio.exported --workdir=RUN --format=onnx|saved_model|tflite \
      [--input=mel|audio] [--quantize=none|float16|int8] --out=DIR

The default format, stablehlo, is jaxaudio.exports.stablehlo's jax.export artefact. The
others convert the same forward pass (jaxaudio.exports.graph) with the weights inside;
meta.json (jaxaudio.exports.card) describes input, outputs, classes, thresholds and the model
card; a quantised export also carries the accuracy change on the run's test split.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.data.prepare import prepare, settings_from_config
from jaxaudio.exports import card as cards
from jaxaudio.exports import contract, graph, runtime, stablehlo
from jaxaudio.exports import quantize as quant
from jaxaudio.runs.rundir import open_run, starting_variables
from jaxaudio.runtime.errors import ConfigError, DataError


def check_flags(fmt: str, input_kind: str, quantize: str) -> None:
  """One sentence for a combination the exporters cannot write."""
  for flag, value, allowed in (("format", fmt, contract.FORMATS),
                               ("input", input_kind, contract.INPUTS),
                               ("quantize", quantize, contract.QUANTIZE)):
    if value not in allowed:
      raise ConfigError(f"--{flag}={value} is not one of {', '.join(allowed)}.")
  if fmt == "stablehlo" and (input_kind != "mel" or quantize != "none"):
    raise ConfigError("--format=stablehlo (the default jax.export artefact) takes float32 mel "
                      "windows; --input=audio and --quantize need --format=onnx, saved_model "
                      "or tflite.")
  if fmt == "saved_model" and quantize != "none":
    raise ConfigError("--quantize applies to --format=onnx and --format=tflite; a SavedModel "
                      "stays float32 (TensorFlow has no quantiser for SavedModels).")
  if input_kind == "audio" and quantize != "none":
    raise ConfigError("--quantize needs --input=mel: the in-graph frontend's power spectrum "
                      "exceeds float16's range and int8's resolution; quantise the mel graph "
                      "and compute the log-mel in float32 (jaxaudio.audio.frontend).")


def _writer(fmt: str):
  """The converter module of `fmt`, imported on demand: the converters (jax2onnx, onnxruntime,
  TensorFlow's) are the optional `export` extra, which the default stablehlo export and
  loading do not need."""
  try:
    return importlib.import_module(f"jaxaudio.exports.to_{fmt}")
  except ImportError as err:
    raise ConfigError(f"--format={fmt} needs {err.name}, which is in jaxaudio's export extra: "
                      "pip install 'jaxaudio[export]'.") from err


def write_model(fn, window: tuple[int, ...], fmt: str, input_kind: str, out: str,
                quantize: str = "none", calibration: np.ndarray | None = None) -> int | None:
  """Write DIR/model.onnx, DIR/saved_model/ or DIR/model.tflite; returns the graph's fixed
  batch size (None: any)."""
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, contract.FILES[fmt])
  writer = _writer(fmt)
  if fmt == "onnx":
    writer.write(writer.convert(fn, input_kind, window), path, quantize, input_kind,
                 calibration)
  elif fmt == "saved_model":
    writer.write(fn, input_kind, window, path)
  else:
    writer.write(fn, input_kind, window, path, quantize, calibration)
  return contract.fixed_batch(fmt, quantize)


def export_model(model: nn.Module, variables: Any, spec: FrontendSpec, classes: list[str],
                 multi_label: bool, out: str, fmt: str, input_kind: str = "mel",
                 quantize: str = "none", calibration: np.ndarray | None = None,
                 settings: dict[str, Any] | None = None,
                 thresholds: dict[str, float] | None = None,
                 card: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Export any jaxaudio classifier (EmbeddingClassifier and its variables) to `out`;
  returns meta.json's contents."""
  check_flags(fmt, input_kind, quantize)
  if fmt == "stablehlo":
    raise ConfigError("export_model writes onnx, saved_model or tflite; the jax.export "
                      "artefact of a run is jaxaudio.exports.stablehlo.export_run.")
  if quantize == "int8" and calibration is None:
    raise ConfigError("--quantize=int8 needs calibration windows (the run's training split).")
  fn, window = graph.export_fn(model, variables, multi_label, spec, input_kind)
  batch = write_model(fn, window, fmt, input_kind, out, quantize, calibration)
  _, dim = graph.output_dims(fn, window)
  settings = settings or {"window_hop": 1.0}
  meta = cards.meta(fmt=fmt, input_kind=input_kind, quantize=quantize, spec=spec,
                    settings=settings, classes=classes, multi_label=multi_label,
                    embedding_dim=dim, batch=batch, thresholds=thresholds, card=card,
                    extra=extra)
  _write_json(os.path.join(out, contract.META), meta)
  return meta


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def _prepared(run):
  """The run's prepared data (rebuilt from its source if the cache was cleared), or None."""
  try:
    return prepare(run.cfg.data, run.info.spec, progress=False)[0]
  except DataError:
    return None


def export_run(workdir: str, out: str, fmt: str = "stablehlo", input_kind: str = "mel",
               quantize: str = "none", step: int | str = "best",
               thresholds: dict[str, float] | None = None) -> dict[str, Any]:
  """Export the run's checkpoint `step` ("best", "latest", a number or "start") to `out` in
  `fmt`; returns meta.json's contents (with "quantization", the accuracy change on the
  test split, when quantised)."""
  check_flags(fmt, input_kind, quantize)
  if fmt == "stablehlo":
    return stablehlo.export_run(workdir, out, step, thresholds)
  run = open_run(workdir, "best" if step == "start" else step)
  if step == "start":
    run.variables, run.step = starting_variables(run)[1], 0
  prepared = _prepared(run)
  if quantize != "none" and prepared is None:
    raise DataError(f"--quantize calibrates on the run's training windows, but its prepared "
                    f"data ({run.cfg.data.source}) cannot be opened or rebuilt; make the data "
                    "source reachable again, or export without --quantize.")
  calibration = quant.calibration(prepared) if quantize == "int8" else None
  card = cards.model_card(run, prepared.meta["splits"] if prepared else None)
  meta = export_model(
      run.model, run.variables, run.info.spec, run.classes, run.multi_label, out, fmt,
      input_kind, quantize, calibration,
      settings=dataclasses.asdict(settings_from_config(run.cfg.data)), thresholds=thresholds,
      card=card, extra={"model": run.info.name, "step": int(run.step),
                        "source_workdir": run.workdir})
  if quantize != "none":
    meta["quantization"] = _quantization_report(run, prepared, out, quantize, calibration)
    _write_json(os.path.join(out, contract.QUANT_REPORT), meta["quantization"])
    _write_json(os.path.join(out, contract.META), meta)
  return meta


def _quantization_report(run, prepared, out: str, quantize: str,
                         calibration: np.ndarray | None) -> dict[str, Any]:
  """The quantised artefact against the float model on the run's test windows."""
  mel, labels = quant.split_windows(prepared, "test")
  cal = 0 if calibration is None else len(calibration)
  if not len(mel):
    return {"quantize": quantize, "test_windows": 0,
            "note": "the run has no test split: no accuracy change to report"}
  net = jax.jit(graph.model_fn(run.model, run.variables, run.multi_label))
  artefact = runtime.load(out)
  return quant.report(lambda m: np.asarray(net(m)[0]),
                      lambda m: artefact(m)["probabilities"], mel, labels, run.multi_label,
                      quantize, cal)
