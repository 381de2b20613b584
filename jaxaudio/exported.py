"""Export a fine-tuned run as a standalone artefact: `python -m jaxaudio.exported --workdir=RUN --out=DIR`.

`python -m jaxaudio.export` is the same command. The artefact (jax.export StableHLO, weights,
meta.json with the validation thresholds) is written by jaxaudio/exports/stablehlo.py and
loaded with jaxaudio.inference.exported.load, which needs only JAX and numpy.
"""

from __future__ import annotations

import json
import os

from absl import flags

from jaxaudio.runtime import xla_cpu

# Before JAX starts: YNNPACK's kernels for XLA:CPU's dots and convolutions (xla_cpu.py).
xla_cpu.apply()

# pylint: disable=wrong-import-position
from jaxaudio.runtime import cli  # noqa: E402
from jaxaudio.evaluation import thresholds as validation_thresholds  # noqa: E402
from jaxaudio.exports.stablehlo import export_run  # noqa: E402
from jaxaudio.runtime.errors import DataError  # noqa: E402
from jaxaudio.runs.rundir import step_flag  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_STEP = flags.DEFINE_string("step", "best", "Checkpoint: best, latest, a step number, or "
                            "start (the weights the run started from).")


def main(argv):
  del argv
  step = step_flag(_STEP.value)
  cuts = None
  if step != "start":
    try:
      cuts = validation_thresholds.as_mapping(validation_thresholds.for_run(_WORKDIR.value,
                                                                            step))
    except DataError as err:
      print(f"note: {err}")
  meta = export_run(_WORKDIR.value, _OUT.value, step, cuts)
  print(json.dumps({k: meta[k] for k in ("model", "step", "embedding_dim", "weights_sha256")}))
  print(f"exported: {os.path.abspath(_OUT.value)}")
  return 0


if __name__ == "__main__":
  cli.run(main)
