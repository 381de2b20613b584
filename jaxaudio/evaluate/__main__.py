"""Evaluate a trained run: `python -m jaxaudio.evaluate --workdir=DIR [--split=test]
[--retrieval] [--robustness]`. Writes DIR/report/evaluation.{json,md} and figures."""

from __future__ import annotations

import json

from absl import flags

from jaxaudio import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m jaxaudio.main.",
                               required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_STEP = flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
_RETRIEVAL = flags.DEFINE_bool("retrieval", False, "Retrieval scores, starting vs fine-tuned.")
_ROBUSTNESS = flags.DEFINE_bool("robustness", False, "Robustness sweep on perturbed audio.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples (0 = no intervals).")


def main(argv):
  del argv
  from jaxaudio.evaluate.evaluation import evaluate_run  # pylint: disable=import-outside-toplevel
  step = _STEP.value if _STEP.value in ("best", "latest") else int(_STEP.value)
  result = evaluate_run(_WORKDIR.value, _SPLIT.value, step, _RETRIEVAL.value, _ROBUSTNESS.value,
                        _BOOTSTRAP.value)
  c = result["classification"]
  print(json.dumps({k: v for k, v in c.items() if isinstance(v, (int, float))}))
  for name, scores in result.get("retrieval", {}).items():
    print(f"retrieval {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
  print(f"report: {result['workdir']}/report/evaluation.md")
  return 0


if __name__ == "__main__":
  cli.run(main)
