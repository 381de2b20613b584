"""Does fine-tuning earn its cost? Train the shipped recipe and its alternatives side by side.

Each recipe is `python -m jaxaudio.main --config=configs/finetune.py` with overrides, run one
after another in fresh workdirs on the same prepared data (prepared once up front, so no
run pays for it). Prints wall time, training time and the test split's per-clip accuracy
and macro-F1 as a Markdown table.

  python bench/compare_recipes.py --source=demo
  python bench/make_speech_dataset.py --out=/tmp/speech
  python bench/compare_recipes.py --source=folder:/tmp/speech

Recipes (default set):
  default          the shipped config: pretrained aiSFX; 300 head-only steps on cached
                   embeddings (linear probe), then 150 steps with block4 (0.1x lr) and the
                   head trained, blocks 1-3 frozen
  no_probe         the same fine-tuning without the probe (150 steps)
  head_only        backbone frozen, head on cached embeddings, the default's 450 steps
  head_only_1200   the same with 1200 steps (is head-only merely under-trained?)
  head_only_150    150 steps on cached embeddings ...
  head_only_150_nocache  ... and the same 150 steps the slow way (full forward each step)
  gradual          head only, then block4 from step 50, then block3 from step 100
  scratch          random init, everything trained, 40 steps (about the default's wall time)
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
RECIPES = {
    "default": [],
    "no_probe": [NO_PROBE, "--config.train.num_steps=150"],
    "head_only": [HEAD_ONLY, NO_PROBE],
    "head_only_1200": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=1200",
                       "--config.train.warmup_steps=40", "--config.train.eval_every=100"],
    "head_only_150": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=150"],
    "head_only_150_nocache": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=150",
                              "--config.train.cache_embeddings=off"],
    "gradual": [HEAD_ONLY, NO_PROBE, "--config.train.num_steps=150",
                "--config.train.unfreeze=((50,'^backbone/block4/','backbone'),"
                "(100,'^backbone/block3/','backbone'))"],
    "scratch": [NO_PROBE, "--config.model.init=scratch",
                "--config.train.param_groups=(('.*','head'),)",
                "--config.train.num_steps=40", "--config.train.warmup_steps=4",
                "--config.train.eval_every=10"],
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
