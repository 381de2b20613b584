"""Which pretrained model fits your audio? `python -m jaxaudio.select --config=... --workdir=DIR`.

  python -m jaxaudio.select --config=configs/finetune.py --config.data.source=folder:PATH \
      --workdir=DIR [--models=aisfx,musicnn_msd,...,panns_cnn14:PATH] \
      [--metric=macro_f1|accuracy|mAP] [--folds=5]

Scores each candidate's pretrained embeddings on the train and validation clips (K-fold linear
probe and retrieval, jaxaudio/workflows/model_selection.py), never the test split, and writes
DIR/report/select.{json,md,png} and TensorBoard: the ranking, whether the runner-up is within
noise, and the command that fine-tunes the recommended model.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from jaxaudio.runtime.command import cli
from jaxaudio.runs import configs
from jaxaudio.workflows import model_selection

_CONFIG = config_flags.DEFINE_config_file("config", "configs/finetune.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the report goes.", required=True)
_MODELS = flags.DEFINE_string(
    "models", "aisfx,musicnn_msd,musicnn_mtt,vgg_msd,vgg_mtt",
    "Comma-separated candidates; PANNs as panns_cnn14:PATH to the official checkpoint.")
_METRIC = flags.DEFINE_enum("metric", "macro_f1", list(model_selection.METRICS),
                            "What the recommendation maximises.")
_FOLDS = flags.DEFINE_integer("folds", 5, "Folds of the train and validation clips.")
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", 1000, "Minibatch steps of each fold's probe.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Windows per embedding forward pass.")


def main(argv):
  del argv
  cfg = cli.load_config(_CONFIG)
  configs.validate(cfg)
  candidates = model_selection.parse_candidates(_MODELS.value)
  result = model_selection.select(cfg, _WORKDIR.value, candidates, _METRIC.value, _FOLDS.value,
                            _PROBE_STEPS.value, _BATCH.value, sys.argv)
  with open(f"{result['report']}/select.md") as f:
    print(f.read(), end="")
  print(f"report: {result['report']}")
  return 0


if __name__ == "__main__":
  cli.run(main)
