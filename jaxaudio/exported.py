"""Export a fine-tuned run as a standalone artefact: `python -m jaxaudio.exported --workdir=RUN --out=DIR`.

`python -m jaxaudio.export` is the same command. The default artefact (jax.export StableHLO,
weights, meta.json with the validation thresholds) is written by jaxaudio/exports/stablehlo.py
and loaded with jaxaudio.inference.exported.load, which needs only JAX and numpy.
`--format=onnx|saved_model|tflite` writes DIR/model.onnx, DIR/saved_model/ or
DIR/model.tflite with meta.json instead (jaxaudio/exports/build.py), runnable without JAX;
`--input=audio` puts the frontend inside the graph, `--quantize=float16|int8` quantises it
and prints the accuracy change on the run's test split.
"""

from __future__ import annotations

import json
import os

from absl import flags

from jaxaudio.runtime.command import cli
from jaxaudio.evaluation import thresholds as validation_thresholds
from jaxaudio.exports import build, contract
from jaxaudio.runtime.errors import DataError
from jaxaudio.runs.rundir import step_flag

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_STEP = flags.DEFINE_string("step", "best", "Checkpoint: best, latest, a step number, or "
                            "start (the weights the run started from).")
_FORMAT = flags.DEFINE_enum("format", "stablehlo", list(contract.FORMATS),
                            "stablehlo (jax.export, needs JAX), onnx, saved_model or tflite.")
_INPUT = flags.DEFINE_enum("input", "mel", list(contract.INPUTS),
                           "The graph's input: mel windows, or audio windows with the frontend "
                           "inside (not stablehlo).")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", list(contract.QUANTIZE),
                              "none, float16 or int8 (onnx and tflite; int8 calibrated on the "
                              "run's training windows).")


def main(argv):
  del argv
  step = step_flag(_STEP.value)
  build.check_flags(_FORMAT.value, _INPUT.value, _QUANTIZE.value)
  cuts = None
  if step != "start":
    try:
      cuts = validation_thresholds.as_mapping(validation_thresholds.for_run(_WORKDIR.value,
                                                                            step))
    except DataError as err:
      print(f"note: {err}")
  meta = build.export_run(_WORKDIR.value, _OUT.value, _FORMAT.value, _INPUT.value,
                          _QUANTIZE.value, step, cuts)
  keys = ("model", "step", "embedding_dim", "weights_sha256", "format", "input", "quantize")
  print(json.dumps({k: meta[k] for k in keys if k in meta}))
  q = meta.get("quantization")
  if q and "change" in q:
    print(f"quantization {q['quantize']}: {q['metric']} on {q['test_windows']} test windows "
          f"{q['float']:.4f} -> {q['quantized']:.4f} (change {q['change']:+.4f}); decisions "
          f"agree on {q['agreement']:.1%} of windows, max |probability difference| "
          f"{q['max_abs_probability_diff']:.4f}")
  elif q:
    print(f"note: {q['note']}")
  print(f"exported: {os.path.abspath(_OUT.value)}")
  return 0


if __name__ == "__main__":
  cli.run(main)
