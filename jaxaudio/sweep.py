"""Tune the recipe on your data: `python -m jaxaudio.sweep --config=configs/finetune.py
--sweep=configs/sweeps/recipe.py --workdir=DIR`.

  [--n_trials=20] [--workers=W] [--storage=postgresql://...] [--sampler=tpe|random|grid]
  [--pruner=median|halving|none] [--study_name=sweep] [--config.KEY=VALUE ...]

An Optuna study over the config keys SPACE.py's get_sweep() names (jaxaudio/tuning/space.py).
Each trial is an ordinary run in DIR/trials/NNNN scored on validation (train.best_metric);
the pruner stops poor trials early; W worker processes share this machine's cores and the
same command on other machines joins a PostgreSQL study. Running the command again after a
kill continues the study (a running trial from its last checkpoint) to exactly n_trials.
Writes DIR/report/sweep.{json,md}, plots, TensorBoard hparams and DIR/best_config.py, and
evaluates the best trial once on the test split.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from jaxaudio.runtime.command import cli
from jaxaudio.tuning import coordinator, study

_CONFIG = config_flags.DEFINE_config_file("config", "configs/finetune.py", "Base config.",
                                          lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", "configs/sweeps/recipe.py",
                             "File whose get_sweep() returns {config key: distribution}.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (trials, study, report).",
                               required=True)
_N_TRIALS = flags.DEFINE_integer("n_trials", 20, "Trials the study ends with.", lower_bound=1)
_WORKERS = flags.DEFINE_integer("workers", 1, "Trials at once on this machine.", lower_bound=1)
_STORAGE = flags.DEFINE_string("storage", "", "Optuna RDB URL (default: DIR/study.db).")
_SAMPLER = flags.DEFINE_enum("sampler", "tpe", list(study.SAMPLERS), "Optuna sampler.")
_PRUNER = flags.DEFINE_enum("pruner", "median", list(study.PRUNERS), "Optuna pruner.")
_STUDY = flags.DEFINE_string("study_name", "sweep", "Study name in the storage.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampler seed.")
_EVALUATE = flags.DEFINE_bool("evaluate", True, "Evaluate the best trial on the test split.")
_WORKER = flags.DEFINE_integer("worker", -1, "Internal: the index of a worker process.")


def main(argv):
  del argv
  cfg = cli.load_config(_CONFIG)
  result = coordinator.run(sys.argv, cfg, _SWEEP.value, _WORKDIR.value, _N_TRIALS.value,
                           _WORKERS.value, _STORAGE.value, _SAMPLER.value, _PRUNER.value,
                           _STUDY.value, _SEED.value, _WORKER.value, _EVALUATE.value)
  if result is None:   # a worker process
    return 0
  best = result["best"]
  print(f"best trial {best['number']}: validation {result['objective']} {best['value']:.4f} "
        f"({best['workdir']})")
  t = result.get("test") or {}
  if "skipped" in t:
    print(f"test split not evaluated: {t['skipped']}")
  for key in ("accuracy", "mAP"):
    if key in t:
      lo, hi = t.get(f"{key}_ci95", (float("nan"),) * 2)
      print(f"its test {key} (not used to choose): {t[key]:.4f}, 95% interval "
            f"[{lo:.4f}, {hi:.4f}]")
      break
  print(f"reproduce: python -m jaxaudio.main --config={_WORKDIR.value}/best_config.py "
        f"--workdir={_WORKDIR.value}/best")
  print(f"report: {_WORKDIR.value}/report/sweep.md")
  return 0


if __name__ == "__main__":
  cli.run(main)
