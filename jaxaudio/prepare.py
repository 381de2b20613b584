"""Prepare a config's data once: `python -m jaxaudio.prepare --config=configs/finetune.py`.

Prints where the prepared dataset and its report are; a second run with unchanged files is a
no-op. The trainer calls the same code when the prepared data is missing.

With Beam's pipeline options the files are decoded and featurized on Apache Beam's workers
(jaxaudio.data.beam_prepare; the `beam` extra) and the dataset is the same bytes:

  python -m jaxaudio.prepare --config=configs/finetune.py \
      --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from jaxaudio.runtime import cli
from jaxaudio.runs import configs
from jaxaudio.data.prepare import prepare
from jaxaudio.models.registry import get_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")
# --runner=...: Beam's pipeline options, taken off the command line before absl reads it.
_PIPELINE_ARGS: list[str] = []


def main(argv):
  del argv
  cfg = cli.load_config(_CONFIG)
  configs.validate(cfg)
  info = get_model(cfg.model.name)
  prepared, built = prepare(cfg.data, info.spec, progress=not _QUIET.value,
                            pipeline_args=_PIPELINE_ARGS)
  with open(os.path.join(prepared.root, "report.json")) as f:
    report = json.load(f)
  summary = {s: {k: v for k, v in d.items() if k in ("clips", "windows", "skipped")}
             for s, d in report["splits"].items()}
  print(json.dumps({"prepared": prepared.root, "built": built, "classes": len(prepared.classes),
                    "splits": summary, "skipped_files": len(report["skipped"]),
                    "files_per_second": round(report["files_per_second"], 1),
                    "report": os.path.join(prepared.root, "report.md")}))
  return 0


if __name__ == "__main__":
  sys.argv, _PIPELINE_ARGS[:] = cli.take_beam_args(sys.argv, "prepare")
  cli.run(main)
