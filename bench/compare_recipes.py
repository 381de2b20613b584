"""Does fine-tuning earn its cost? Train the shipped recipe and its alternatives side by side.

Each recipe is `python -m jaxaudio.main --config=configs/finetune.py` with overrides, run one
after another in fresh workdirs on the same prepared data (prepared once up front, so no
run pays for it). Prints wall time, training time and the test split's per-clip accuracy
and macro-F1 as a Markdown table.

  python bench/compare_recipes.py --source=demo
  python bench/make_speech_dataset.py --out=/tmp/speech
  python bench/compare_recipes.py --source=folder:/tmp/speech

Recipes (the README's rows; "_lr1e-3" rows use the previous defaults: head 1e-3, unfrozen
blocks 1e-4, warmup 15):
  default                  the shipped config: probe 1200 steps on cached embeddings, then
                           block 4 (1e-4) + head 150 steps, blocks 1-3 frozen; head 3e-3
  probe300                 300 probe steps, then the same 150 fine-tuning steps
  probe300_lr1e-3          the same at the previous learning rates
  no_probe_lr1e-3          150 fine-tuning steps without a probe (the previous default)
  head_only_1200 / _450    head only on cached embeddings, 1200 / 450 steps
  head_only_150_lr1e-3     150 steps on cached embeddings ...
  head_only_150_nocache_lr1e-3   ... and the same 150 steps with a full forward each step
  gradual_lr1e-3           head only, + block4 from step 50, + block3 from step 100
  scratch_lr1e-3           random init, everything trained, 40 steps (the default's wall time)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HEAD_ONLY = "--config.train.param_groups=(('^backbone/','frozen'),('^head/','head'))"
NO_PROBE = "--config.train.probe_steps=0"
LR_PREVIOUS = ["--config.train.learning_rate=1e-3", "--config.train.warmup_steps=15",
               "--config.train.group_lr_mult={'head': 1.0, 'backbone': 0.1}"]
PROBE_300 = ["--config.train.probe_steps=300", "--config.train.num_steps=450"]
RECIPES = {
    "default": [],
    "probe300": PROBE_300 + ["--config.train.warmup_steps=15"],
    "probe300_lr1e-3": PROBE_300 + LR_PREVIOUS,
    "no_probe_lr1e-3": [NO_PROBE, "--config.train.num_steps=150"] + LR_PREVIOUS,
    "head_only_1200": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=1200",
                       "--config.train.eval_every=100"],
    "head_only_450": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=450",
                      "--config.train.warmup_steps=15"],
    "head_only_150_lr1e-3": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=150"] + LR_PREVIOUS,
    "head_only_150_nocache_lr1e-3": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=150",
                                     "--config.train.cache_embeddings=off"] + LR_PREVIOUS,
    "gradual_lr1e-3": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=150",
                       "--config.train.unfreeze=((50,'^backbone/block4/','backbone'),"
                       "(100,'^backbone/block3/','backbone'))"] + LR_PREVIOUS,
    "scratch_lr1e-3": [NO_PROBE, "--config.model.init=scratch",
                       "--config.train.param_groups=(('.*','head'),)",
                       "--config.train.num_steps=40", "--config.train.eval_every=10"]
                      + LR_PREVIOUS + ["--config.train.warmup_steps=4"],
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", default="demo")
  parser.add_argument("--workroot", default="/tmp/jaxaudio-recipes")
  parser.add_argument("--recipes", default=",".join(RECIPES))
  args = parser.parse_args()
  base = [sys.executable, "-m", "jaxaudio.main", "--config=configs/finetune.py",
          f"--config.data.source={args.source}"]
  subprocess.run([sys.executable, "-m", "jaxaudio.prepare", "--config=configs/finetune.py",
                  f"--config.data.source={args.source}"], check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL)
  rows = []
  for name in args.recipes.split(","):
    workdir = os.path.join(args.workroot, name)
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(base + [f"--workdir={workdir}"] + RECIPES[name], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
      print(proc.stderr[-3000:], file=sys.stderr)
      raise SystemExit(f"recipe {name} failed (exit {proc.returncode})")
    rep = json.load(open(os.path.join(workdir, "report", "test_metrics.json")))
    rows.append((name, wall, rep["train_seconds"], rep["accuracy"], rep["macro_f1"],
                 rep["num_examples"]))
    print(f"{name}: wall {wall:.0f} s, train {rep['train_seconds']:.0f} s, "
          f"test accuracy {rep['accuracy']:.3f}, macro-F1 {rep['macro_f1']:.3f}", flush=True)
  print(f"\nsource={args.source} (test clips: {rows[0][5]})\n")
  print("| recipe | wall s | train s | test accuracy | test macro-F1 |")
  print("|---|---:|---:|---:|---:|")
  for name, wall, train, acc, f1, _ in rows:
    print(f"| {name} | {wall:.0f} | {train:.0f} | {acc:.3f} | {f1:.3f} |")


if __name__ == "__main__":
  main()
