"""Evaluate a trained run: `python -m jaxaudio.evaluate --workdir=DIR [--split=test]
[--retrieval] [--robustness]`. Writes DIR/report/evaluation.{json,md} and figures.

With --folds=K the run's recipe is cross-validated instead: K runs in DIR/cv/fold_i, each
testing on one fold, summarised as mean ± std in DIR/report/cross_validation.{json,md,png}."""

from __future__ import annotations

import json

from absl import flags

# First, as in the training commands: the same XLA:CPU kernels give the same numbers as a
# run's own end-of-training report (it cross-validates, and re-evaluates runs they evaluated).
from jaxaudio.runtime.command import cli
from jaxaudio.runtime import hosts
from jaxaudio.runtime.errors import JaxAudioError
from jaxaudio.evaluation.heldout import evaluate_run
from jaxaudio.runs.rundir import step_flag

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of python -m jaxaudio.main.",
                               required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_STEP = flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
_RETRIEVAL = flags.DEFINE_bool("retrieval", False, "Retrieval scores, starting vs fine-tuned.")
_ROBUSTNESS = flags.DEFINE_bool("robustness", False, "Robustness sweep on perturbed audio.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples (0 = no intervals).")
_FOLDS = flags.DEFINE_integer("folds", 0, "K-fold cross-validation of the run's recipe (0 = off).")
hosts.define_flags()


def _cross_validate() -> int:
  if _FOLDS.value < 2:
    raise JaxAudioError(f"--folds={_FOLDS.value} cannot cross-validate; use 2 or more folds "
                        "(5 for ESC-50).")
  # Only --folds trains: the trainer imports TensorFlow (its TensorBoard writers, ~10 s),
  # which one run's evaluation loads only to write its summaries, after every check.
  from jaxaudio.workflows.crossval import cross_validate  # pylint: disable=import-outside-toplevel
  summary = cross_validate(_WORKDIR.value, _FOLDS.value, _RETRIEVAL.value, _ROBUSTNESS.value,
                           _BOOTSTRAP.value)
  if not hosts.is_primary():
    return 0
  for key, s in summary["classification"].items():
    if key != "num_examples":
      print(f"{key}: {s['mean']:.4f} ± {s['std']:.4f}  (folds: "
            + ", ".join(f"{x:.4f}" for x in s["folds"]) + ")")
  print(f"report: {summary['workdir']}/report/cross_validation.md")
  return 0


def main(argv):
  del argv
  hosts.join_from_flags()
  if _FOLDS.value:
    return _cross_validate()
  step = step_flag(_STEP.value, start=False)
  result = evaluate_run(_WORKDIR.value, _SPLIT.value, step, _RETRIEVAL.value, _ROBUSTNESS.value,
                        _BOOTSTRAP.value)
  if not hosts.is_primary():   # every process holds the result; one prints it
    return 0
  c = result["classification"]
  print(json.dumps({k: v for k, v in c.items() if isinstance(v, (int, float))}))
  for name, scores in result.get("retrieval", {}).items():
    print(f"retrieval {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
  print(f"report: {result['workdir']}/report/evaluation.md")
  return 0


if __name__ == "__main__":
  cli.run(main)
