"""Recipe benchmark: fine-tuning recipes against a converged probe on data sets whose test
split differs from training (bench/make_shift_datasets.py), several seeds each.

Every (data set, recipe, seed) is `python -m jaxaudio.main --config=configs/finetune.py`
with the recipe's overrides, the data set's group rule (validation carved group-disjoint
from train, so it mirrors the test shift) and train.seed = data.shuffle_seed = seed, in its
own workdir. The converged-probe reference is scikit-learn: StandardScaler +
LogisticRegression on the pretrained model's frozen clip embeddings, C chosen by 5-fold
group cross-validation on train. Results go to OUT/results.jsonl as they come (a rerun skips
what is there), then a Markdown table per data set: test accuracy and macro-F1 as mean and
95% t-interval over seeds, retrieval mAP of the exported embedding (each test clip queries
the others) against the pretrained one, wall time, rank; and the average rank over data sets.

  python bench/make_shift_datasets.py --out=/tmp/shift
  python bench/recipes.py --data=/tmp/shift --out=/tmp/recipes --recipes=default,plain
  python bench/recipes.py --out=/tmp/recipes --table [--recipes=...]   # table of what is there
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jaxaudio.runs.configs import base_config
from jaxaudio.data.prepare import prepare
from jaxaudio.data.sources import list_source
from jaxaudio.inference.embedder import Embedder
from jaxaudio.evaluation import report
from jaxaudio.models.registry import get_model
from jaxaudio.weights.pretrained import pretrained_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD_ONLY = "--config.train.param_groups=(('^backbone/','frozen'),('^head/','head'))"
# The default before issue 10, spelled out so its row keeps its meaning when the default moves.
LPFT_V1 = ["--config.train.num_steps=1350", "--config.train.probe_steps=1200",
           "--config.train.param_groups=(('^backbone/(bn0|block1|block2|block3)/','frozen'),"
           "('^backbone/','backbone'),('^head/','head'))",
           "--config.train.group_lr_mult={'head': 1.0, 'backbone': 0.0333333}",
           "--config.train.learning_rate=3e-3", "--config.train.warmup_steps=40",
           "--config.train.final_lr_fraction=0.01", "--config.train.weight_decay=1e-4",
           "--config.train.grad_clip_norm=1.0", "--config.train.head_dropout=0.2",
           "--config.train.bn=batch", "--config.train.augment.enabled=True",
           "--config.train.label_smoothing=0.0"]
PLAIN = ["--config=configs/plain_finetune.py"]
RECIPES: dict[str, list[str]] = {
    "default": [],
    "plain": PLAIN,
    "lpft_v1": LPFT_V1,
    "lpft_v1_bn_running": LPFT_V1 + ["--config.train.bn=running"],
    "lpft_v1_no_augment": LPFT_V1 + ["--config.train.augment.enabled=False"],
    "lpft_v1_bn_running_no_augment": LPFT_V1 + ["--config.train.bn=running",
                                                "--config.train.augment.enabled=False"],
    "plain_bn_running": PLAIN + ["--config.train.bn=running"],
    "plain_augment": PLAIN + ["--config.train.augment.enabled=True"],
    "plain_augment_12ep": PLAIN + ["--config.train.augment.enabled=True",
                                   "--config.train.epochs=12"],
    "plain_lr3e-4": PLAIN + ["--config.train.learning_rate=3e-4"],
    "plain_blocks234": PLAIN + ["--config.train.param_groups=(('^backbone/(bn0|block1)/',"
                                "'frozen'),('^backbone/','backbone'),('^head/','head'))"],
    "plain_smooth": PLAIN + ["--config.train.label_smoothing=0.1"],
    "plain_head1e-3": PLAIN + ["--config.train.group_lr_mult={'head': 10.0, 'backbone': 1.0}"],
    "joint_lr3e-4": PLAIN + ["--config.train.learning_rate=3e-4"],
    "joint_lr3e-4_class_weights": PLAIN + ["--config.train.learning_rate=3e-4",
                                           "--config.train.class_weights=balanced"],
    "joint_lr3e-4_balanced_sampling": PLAIN + ["--config.train.learning_rate=3e-4",
                                               "--config.train.sampling=balanced"],
    "joint_lr3e-4_ema": PLAIN + ["--config.train.learning_rate=3e-4",
                                 "--config.train.ema_decay=0.99"],
    "joint_lr3e-4_blocks234": PLAIN + ["--config.train.learning_rate=3e-4",
                                       "--config.train.param_groups=(('^backbone/(bn0|block1)/',"
                                       "'frozen'),('^backbone/','backbone'),('^head/','head'))"],
    "lpft_plain": ["--config=configs/plain_finetune.py", "--config.train.probe_steps=600",
                   "--config.train.learning_rate=1e-3", "--config.train.bn=running",
                   "--config.train.group_lr_mult={'head': 1.0, 'backbone': 0.1}"],
    "probe_only_1200": [HEAD_ONLY, "--config.train.probe_steps=0",
                        "--config.train.num_steps=1200"],
    # The default recipe on the other pretrained models (python -m jaxaudio.select ranks them).
    **{f"default_{m}": [f"--config.model.name={m}"]
       for m in ("musicnn_mtt", "musicnn_msd", "vgg_mtt", "vgg_msd")},
}
REFERENCE = "sklearn_probe"


def _t95(values: list[float]) -> tuple[float, float]:
  """Mean and half-width of the 95% t-interval (0 for one value)."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), 0.0
  return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def dataset_settings(path: str) -> dict[str, str]:
  """The data.* settings of a data set from make_shift_datasets.py: its folder and groups."""
  with open(os.path.join(path, "dataset.json")) as f:
    meta = json.load(f)
  return {"source": f"folder:{path}", "group": meta["group_config"]}


def run_recipe(data_dir: str, name: str, recipe: str, seed: int, out: str) -> dict:
  """One training run; returns its result row (the workdir keeps config, reports, logs)."""
  workdir = os.path.join(out, "runs", f"{name}-{recipe}-s{seed}")
  shutil.rmtree(workdir, ignore_errors=True)
  overrides = RECIPES[recipe]
  config = next((o for o in overrides if o.startswith("--config=")), "--config=configs/finetune.py")
  cmd = ([sys.executable, "-m", "jaxaudio.main", config, f"--workdir={workdir}"]
         + [f"--config.data.{k}={v}"
            for k, v in dataset_settings(os.path.join(data_dir, name)).items()]
         + [o for o in overrides if not o.startswith("--config=")]
         + [f"--config.train.seed={seed}", f"--config.data.shuffle_seed={seed}",
            "--config.evaluate.retrieval=True", "--config.evaluate.bootstrap=0",
            "--config.train.logmel_images=0"])
  t0 = time.perf_counter()
  log = os.path.join(out, "logs", f"{name}-{recipe}-s{seed}.log")
  with open(log, "w") as f:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
  wall = time.perf_counter() - t0
  if proc.returncode:
    raise SystemExit(f"{name}/{recipe}/seed {seed} failed (exit {proc.returncode}); see {log}")
  with open(os.path.join(workdir, "report", "test_metrics.json")) as f:
    test = json.load(f)
  with open(os.path.join(workdir, "report", "evaluation.json")) as f:
    ev = json.load(f)
  retr = ev.get("retrieval", {})
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)   # disk
  return {"dataset": name, "recipe": recipe, "seed": seed, "wall": wall,
          "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
          "recall": {c: v["recall"] for c, v in test["per_class"].items()},
          "best_step": test["best_step"],
          "map_start": next((v["mAP"] for k, v in retr.items() if k != "fine-tuned"), None),
          "map_tuned": retr.get("fine-tuned", {}).get("mAP")}


def sklearn_probe(data_dir: str, name: str) -> dict:
  """StandardScaler + LogisticRegression on frozen pretrained clip embeddings (mean of the
  clip's window embeddings), C by 5-fold group cross-validation on train (fewer folds when
  train has fewer groups)."""
  t0 = time.perf_counter()
  cfg = base_config()
  cfg.data.update(dataset_settings(os.path.join(data_dir, name)))
  info = get_model(cfg.model.name)
  prepared, _ = prepare(cfg.data, info.spec, progress=False)
  groups = {c.key: c.group for c in list_source(cfg.data).clips}
  embedder = Embedder(info, pretrained_variables(info, None)[0])
  feats = {}
  for split in ("train", "test"):
    src = prepared.data_source(split)
    recs = [src[i] for i in range(len(src))]
    emb = embedder.embed_windows(np.stack([np.asarray(r["mel"], np.float32) for r in recs]))
    clip = np.array([int(r["clip"]) for r in recs])
    ids = np.unique(clip)
    x = np.stack([emb[clip == i].mean(0) for i in ids])
    y = np.array([int(recs[int(np.flatnonzero(clip == i)[0])]["label"]) for i in ids])
    keys = prepared.meta["splits"][split]["clip_keys"]
    feats[split] = (x, y, [groups[keys[i]] for i in ids])
  x, y, g = feats["train"]
  search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                        {"logisticregression__C": np.logspace(-4, 2, 7)},
                        cv=GroupKFold(n_splits=min(5, len(set(g)))), n_jobs=1)
  search.fit(x, y, groups=g)
  xt, yt, _ = feats["test"]
  proba = search.predict_proba(xt)
  logits = np.log(proba + 1e-12)
  rep = report.classification_report({"logits": logits, "label": yt}, prepared.classes, False)
  return {"dataset": name, "recipe": REFERENCE, "seed": 0, "wall": time.perf_counter() - t0,
          "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
          "recall": {c: v["recall"] for c, v in rep["per_class"].items()},
          "best_step": None, "C": float(search.best_params_["logisticregression__C"]),
          "map_start": None, "map_tuned": None}


def load(out: str) -> list[dict]:
  path = os.path.join(out, "results.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _wall(rows: list[dict]) -> str:
  walls = [r["wall"] for r in rows if r.get("wall") is not None]
  return f"{np.mean(walls):.0f}" if walls else "-"


def table(rows: list[dict], rare: dict[str, list[str]]) -> str:
  datasets = sorted({r["dataset"] for r in rows})
  recipes = list(dict.fromkeys(r["recipe"] for r in rows))
  ranks: dict[str, list[float]] = {r: [] for r in recipes}
  lines = []
  for d in datasets:
    here = {rc: [r for r in rows if r["dataset"] == d and r["recipe"] == rc] for rc in recipes}
    here = {rc: v for rc, v in here.items() if v}
    means = {rc: np.mean([r["accuracy"] for r in v]) for rc, v in here.items()}
    order = sorted(means, key=lambda rc: -means[rc])
    for rank, rc in enumerate(order, start=1):
      ranks[rc].append(rank)
    rare_cols = rare.get(d, [])
    lines += ["", f"**{d}**", "",
              "| recipe | seeds | test accuracy | test macro-F1 | retrieval mAP (start -> tuned) "
              + "".join(f"| recall {c} " for c in rare_cols) + "| wall s | rank |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(rare_cols) + "---:|---:|"]
    for rc in order:
      v = here[rc]
      acc, acc_ci = _t95([r["accuracy"] for r in v])
      f1, f1_ci = _t95([r["macro_f1"] for r in v])
      maps = [(r["map_start"], r["map_tuned"]) for r in v
              if r.get("map_tuned") is not None and r.get("map_start") is not None]
      m = (f"{np.mean([a for a, _ in maps]):.3f} -> {np.mean([b for _, b in maps]):.3f}"
           if maps else "-")
      rec = "".join(f"| {np.mean([r['recall'][c] for r in v]):.2f} " for c in rare_cols)
      lines.append(f"| {rc} | {len(v)} | {acc:.3f} ± {acc_ci:.3f} | {f1:.3f} ± {f1_ci:.3f} | {m} "
                   f"{rec}| {_wall(v)} | {order.index(rc) + 1} |")
  lines += ["", "| recipe | average rank | data sets |", "|---|---:|---:|"]
  for rc in sorted(ranks, key=lambda rc: (np.mean(ranks[rc]) if ranks[rc] else 99)):
    if ranks[rc]:
      lines.append(f"| {rc} | {np.mean(ranks[rc]):.2f} | {len(ranks[rc])} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="/tmp/shift")
  parser.add_argument("--datasets", default="speakers,instruments,rooms,noise")
  parser.add_argument("--recipes", default=",".join(RECIPES) + "," + REFERENCE)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out", default="/tmp/recipes")
  parser.add_argument("--table", action="store_true", help="print the table and stop")
  args = parser.parse_args()
  rare = {"noise": ["left", "right"]}
  if not args.table:
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    done = {(r["dataset"], r["recipe"], r["seed"]) for r in load(args.out)}
    for name in args.datasets.split(","):
      for recipe in args.recipes.split(","):
        if recipe != REFERENCE and recipe not in RECIPES:
          raise SystemExit(f"unknown recipe {recipe}; known: {', '.join(RECIPES)}, {REFERENCE}")
        for seed in ([0] if recipe == REFERENCE else [int(s) for s in args.seeds.split(",")]):
          if (name, recipe, seed) in done:
            continue
          row = (sklearn_probe(args.data, name) if recipe == REFERENCE
                 else run_recipe(args.data, name, recipe, seed, args.out))
          with open(os.path.join(args.out, "results.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
          print(f"{name} {recipe} seed {seed}: accuracy {row['accuracy']:.3f}, macro-F1 "
                f"{row['macro_f1']:.3f}, mAP {row['map_start']} -> {row['map_tuned']}, "
                f"{row['wall']:.0f} s", flush=True)
  wanted = args.recipes.split(",")
  rows = [r for r in load(args.out) if r["recipe"] in wanted and
          r["dataset"] in args.datasets.split(",")]
  print(table(sorted(rows, key=lambda r: wanted.index(r["recipe"])), rare))


if __name__ == "__main__":
  main()
