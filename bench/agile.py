"""Agile modelling benchmark: from one example per class to a detector, by a simulated
annotator who answers from the ground truth (bench/make_agile_archive.py's events.csv).

For each seed (a different starting example per class) and each strategy, rounds of K
proposed windows per class are labelled: a window is a positive of a class when it overlaps
one of its words by more than half of the shorter of the two, else a negative of it. After
each budget (labels per class) the figures are taken over ALL windows of the archive
(labelled ones included; each window's truth as the annotator would answer):
average precision per class, and precision / recall at the threshold `learn` chose.

  search    nearest neighbours of the positives (max cosine similarity to any labelled
            positive window); the next K are the best unlabelled windows
  top, margin, mixed   `learn` on the labels so far, then `rank --strategy=...`

Then the labels of the best strategy at the largest budget are exported (search labels
--export), aiSFX is fine-tuned on them (python -m jaxaudio.main, the default recipe, the
recording as group), the archive is re-indexed with the fine-tuned model and `learn` runs again
on the same labels: the same figures with the fine-tuned embedding.

  python bench/make_agile_archive.py --out=/tmp/agile
  python bench/agile.py --archive=/tmp/agile --work=/tmp/agile-work --seeds=5

The reference, perch-hoplite's own linear classifier (perch_hoplite.agile.classifier.
train_linear_classifier), is trained on the same embeddings and the same labels (those of
`--hoplite_on`, at every budget) in its own virtual environment (bench/hoplite_reference.py:
its wheel pins ml-collections<0.2 and absl-py<2 against jaxaudio's stack), fed with files:

  python bench/agile.py ... --hoplite_python=/root/hoplite-venv/bin/python --hoplite_on=top
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxaudio.search import agile, learn  # noqa: E402  pylint: disable=wrong-import-position
from jaxaudio.search.labels import Label, LabelStore  # noqa: E402  pylint: disable=wrong-import-position

TARGETS = ("yes", "stop", "seven")
BUDGETS = (10, 20, 50, 100, 200)
STRATEGIES = ("search", "top", "margin", "mixed")


def run(cmd: list[str]) -> str:
  print("$", " ".join(cmd), flush=True)
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  if r.returncode:
    raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
  return r.stdout


def load_events(archive_dir: str) -> dict[str, list[tuple[float, float, str]]]:
  out: dict[str, list] = {}
  with open(os.path.join(archive_dir, "events.csv")) as f:
    for r in csv.DictReader(f):
      out.setdefault(r["path"], []).append((float(r["start"]), float(r["end"]), r["label"]))
  return out


def window_truth(archive: learn.Archive, events, classes) -> np.ndarray:
  """[N, C]: the annotator's answer for every window (more than half of the shorter)."""
  truth = np.zeros((len(archive.offsets), len(classes)), bool)
  rows = archive.file_rows()
  for path, evs in events.items():
    if path not in rows:
      continue
    lo, hi = rows[path]
    start = archive.offsets[lo:hi].astype(np.float64)
    end = start + archive.window_seconds
    for a, b, label in evs:
      if label in classes:
        need = 0.5 * min(archive.window_seconds, b - a)
        truth[lo:hi, classes.index(label)] |= (np.minimum(end, b) - np.maximum(start, a)) > need
  return truth


def annotate(archive, truth, classes, c, rows_) -> list[Label]:
  j = classes.index(c)
  out = []
  for r in rows_:
    e = archive.files[int(archive.file_of_row[r])]
    s = float(archive.offsets[r])
    out.append(Label(e.path, s, min(s + archive.window_seconds, e.seconds), c,
                     bool(truth[r, j]), who="simulated", source="bench"))
  return out


def labelled_mask(archive, labels, c) -> np.ndarray:
  mask = np.zeros(len(archive.offsets), bool)
  rows = archive.file_rows()
  for lab in labels:
    if lab.label == c:
      lo, hi = rows[lab.file]
      s = archive.offsets[lo:hi]
      mask[lo:hi] |= (s < lab.end) & (s + archive.window_seconds > lab.start)
  return mask


def row_of(archive, label: Label) -> int:
  lo, hi = archive.file_rows()[label.file]
  return lo + int(np.argmin(np.abs(archive.offsets[lo:hi] - label.start)))


def figures(scores, truth_j, threshold=None) -> dict[str, float]:
  out = {"ap": float(average_precision_score(truth_j, scores))}
  if threshold is not None:
    pred = scores >= threshold
    out["precision"] = float(truth_j[pred].mean()) if pred.any() else float("nan")
    out["recall"] = float(pred[truth_j].mean())
  return out


def hoplite(args, archive, truth, classes, labels, tag) -> dict[str, dict[str, float]]:
  """AP of perch-hoplite's classifier trained on `labels` (bench/hoplite_reference.py)."""
  arrays = os.path.join(args.work, "hoplite-in.npz")
  if not os.path.exists(arrays):
    np.savez(arrays, embeddings=archive.embeddings, file_of_row=archive.file_of_row,
             offsets=archive.offsets, hop=archive.hop_seconds)
  lab_file = os.path.join(args.work, f"hoplite-labels-{tag}.json")
  with open(lab_file, "w") as f:
    json.dump([{"row": row_of(archive, lab), "label": lab.label, "positive": lab.positive}
               for lab in labels], f)
  out = os.path.join(args.work, f"hoplite-out-{tag}.npz")
  run([args.hoplite_python, os.path.join(ROOT, "bench", "hoplite_reference.py"), arrays,
       lab_file, out])
  got = np.load(out)
  names = [str(c) for c in got["classes"]]
  return {c: figures(got["logits"][:, names.index(c)], truth[:, j])
          for j, c in enumerate(classes)}


def one_run(index, archive, truth, classes, strategy, seed, k, db_url, args=None):
  """{budget: {class: figures}} of one strategy and seed (with "hoplite" beside them when
  the reference runs on this strategy's labels); the labels at the end."""
  rng = np.random.default_rng(seed)
  db = LabelStore(db_url)
  labels = []
  for j, c in enumerate(classes):     # one example per class to start from
    r = int(rng.choice(np.flatnonzero(truth[:, j])))
    labels += annotate(archive, truth, classes, c, [r])
  db.add(labels)
  results = {}
  count = 1
  while count < max(BUDGETS):
    clfs = None if strategy == "search" else {
        clf.label: clf for clf in learn.learn(index, classes, labels, archive=archive)}
    take = k - count % k      # the first round tops the starting example up to K
    for j, c in enumerate(classes):
      if strategy == "search":
        pos = [row_of(archive, lab) for lab in labels if lab.label == c and lab.positive]
        score = (archive.embeddings @ archive.embeddings[pos].T).max(axis=1)
        score[labelled_mask(archive, labels, c)] = -np.inf
        rows_ = np.argsort(-score, kind="stable")[:take]
      else:
        props = learn.rank(archive, clfs[c], [lab for lab in labels if lab.label == c], take,
                           strategy)
        rows_ = [row_of(archive, Label(p.file, p.offset, p.end, c, True)) for p in props]
      new = annotate(archive, truth, classes, c, rows_)
      db.add(new)
      labels += new
    count += take
    if count in BUDGETS:
      results[count] = evaluate(index, archive, truth, classes, strategy, labels, db_url)
      print(f"  seed {seed} {strategy:6s} {count:3d} labels/class: " + ", ".join(
          f"{c} AP {results[count][c]['ap']:.3f}" for c in classes), flush=True)
      if args is not None and args.hoplite_python and strategy == args.hoplite_on:
        results[count]["hoplite"] = hoplite(args, archive, truth, classes, labels,
                                            f"{strategy}-{seed}-{count}")
        print(f"  seed {seed} hoplite {count:3d} labels/class: " + ", ".join(
            f"{c} AP {results[count]['hoplite'][c]['ap']:.3f}" for c in classes), flush=True)
  db.close()
  return results, labels


def evaluate(index, archive, truth, classes, strategy, labels, db_url):
  out = {}
  if strategy == "search":
    for j, c in enumerate(classes):
      pos = [row_of(archive, lab) for lab in labels if lab.label == c and lab.positive]
      out[c] = figures((archive.embeddings @ archive.embeddings[pos].T).max(axis=1), truth[:, j])
    return out
  for clf in learn.learn(index, classes, labels, archive=archive):
    j = classes.index(clf.label)
    out[clf.label] = figures(clf.scores(archive.embeddings), truth[:, j], clf.threshold)
  return out


def interval(values) -> tuple[float, float, float]:
  """Mean and a t 95% interval over seeds."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), float("nan"), float("nan")
  h = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
  return float(v.mean()), float(v.mean() - h), float(v.mean() + h)


def table(all_results, classes, budgets) -> str:
  lines = ["| strategy | labels/class | " + " | ".join(f"{c} AP" for c in classes)
           + " | mean AP | mean precision@thr |", "|---|---:|" + "---:|" * (len(classes) + 2)]
  for strategy, per_seed in all_results.items():
    for b in budgets:
      if not all(b in r for r in per_seed):
        continue
      cells = []
      for c in classes:
        m, lo, hi = interval([r[b][c]["ap"] for r in per_seed])
        cells.append(f"{m:.3f} ({lo:.3f}-{hi:.3f})")
      m, lo, hi = interval([np.mean([r[b][c]["ap"] for c in classes]) for r in per_seed])
      prec = [np.nanmean([r[b][c].get("precision", np.nan) for c in classes]) for r in per_seed]
      p = interval(prec) if not np.all(np.isnan(prec)) else (np.nan, np.nan, np.nan)
      lines.append(f"| {strategy} | {b} | " + " | ".join(cells) + f" | {m:.3f} ({lo:.3f}-{hi:.3f})"
                   f" | {p[0]:.3f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archive", required=True)
  parser.add_argument("--work", required=True)
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--strategies", default=",".join(STRATEGIES))
  parser.add_argument("--finetune", action="store_true", help="fine-tune on the best "
                      "strategy's labels, re-index, learn again")
  parser.add_argument("--hoplite_python", default="", help="python of a virtual environment "
                      "with perch-hoplite and tensorflow-cpu: run the reference classifier")
  parser.add_argument("--hoplite_on", default="top", help="the strategy whose labels the "
                      "reference classifier is trained on")
  args = parser.parse_args()
  os.makedirs(args.work, exist_ok=True)
  py = sys.executable
  base = os.path.join(args.work, "base")
  if not os.path.isdir(os.path.join(base, "checkpoints")):   # pretrained aiSFX, as it starts
    run([py, "-m", "jaxaudio.main", "--config=configs/finetune.py", f"--workdir={base}",
         "--config.train.num_steps=1", "--config.evaluate.at_end=False"])
  index = os.path.join(args.work, "index")
  t = time.perf_counter()
  run([py, "-m", "jaxaudio.search", "index", f"--workdir={base}", "--step=start",
       f"--audio={args.archive}", f"--index={index}"])
  print(f"indexed in {time.perf_counter() - t:.0f} s")
  archive = learn.open_archive(index)
  events = load_events(args.archive)
  classes = list(TARGETS)
  truth = window_truth(archive, events, classes)
  print(f"{len(archive.offsets)} windows of {archive.window_seconds:.2f} s in "
        f"{len(archive.files)} recordings; positive windows per class "
        f"{dict(zip(classes, truth.sum(0).tolist()))}", flush=True)
  all_results: dict[str, list] = {}
  final_labels = {}
  for strategy in args.strategies.split(","):
    all_results[strategy] = []
    for seed in range(args.seeds):
      db = f"sqlite:///{os.path.join(args.work, f'labels-{strategy}-{seed}.sqlite')}"
      if os.path.exists(db.removeprefix("sqlite:///")):
        os.remove(db.removeprefix("sqlite:///"))
      res, labels = one_run(index, archive, truth, classes, strategy, seed, args.k, db, args)
      if any("hoplite" in r for r in res.values()):
        all_results.setdefault(f"hoplite ({strategy}'s labels)", []).append(
            {b: r.pop("hoplite") for b, r in res.items()})
      all_results[strategy].append(res)
      final_labels[(strategy, seed)] = db
  report = {"windows": int(len(archive.offsets)), "window_seconds": archive.window_seconds,
            "positive_windows": dict(zip(classes, truth.sum(0).tolist())),
            "results": {s: [{str(b): v for b, v in r.items()} for r in rs]
                        for s, rs in all_results.items()}}
  print(table(all_results, classes, BUDGETS))
  if args.finetune:
    learned = [s for s in all_results if s in ("top", "margin", "mixed")]
    best = max(learned, key=lambda s: np.mean([np.mean([r[max(BUDGETS)][c]["ap"]
                                                        for c in classes])
                                               for r in all_results[s]]))
    report["finetune"] = finetune(args, py, index, archive, events, classes, best,
                                  final_labels[(best, 0)], all_results[best][0])
  with open(os.path.join(args.work, "agile.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {os.path.join(args.work, 'agile.json')}")


def finetune(args, py, index, archive, events, classes, strategy, db, frozen):
  """Fine-tune aiSFX on seed 0's labels of `strategy`, re-index, learn again."""
  csv_path = os.path.join(args.work, "labels.csv")
  db_store = LabelStore(db)
  agile_rows = agile.export_rows(db_store.all())
  db_store.close()
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=agile.EXPORT_COLUMNS)
    w.writeheader()
    w.writerows(agile_rows)
  run_dir = os.path.join(args.work, "finetuned")
  t = time.perf_counter()
  run([py, "-m", "jaxaudio.main", "--config=configs/finetune.py", f"--workdir={run_dir}",
       f"--config.data.source=csv:{csv_path}", "--config.evaluate.at_end=False"])
  seconds = time.perf_counter() - t
  tuned = os.path.join(args.work, "index-finetuned")
  run([py, "-m", "jaxaudio.search", "index", f"--workdir={run_dir}",
       f"--audio={args.archive}", f"--index={tuned}"])
  tuned_archive = learn.open_archive(tuned)
  truth = window_truth(tuned_archive, events, classes)
  out = {}
  db_store = LabelStore(db)
  labels = db_store.all()
  db_store.close()
  for clf in learn.learn(tuned, classes, labels, archive=tuned_archive):
    j = classes.index(clf.label)
    out[clf.label] = figures(clf.scores(tuned_archive.embeddings), truth[:, j], clf.threshold)
  budget = max(BUDGETS)
  print(f"fine-tuned on {len(agile_rows)} labelled spans ({strategy}, seed 0) in {seconds:.0f} s:")
  for c in classes:
    print(f"  {c}: AP frozen {frozen[budget][c]['ap']:.3f} -> fine-tuned {out[c]['ap']:.3f}; "
          f"precision@thr {frozen[budget][c].get('precision', float('nan')):.3f} -> "
          f"{out[c]['precision']:.3f}")
  return {"strategy": strategy, "frozen": frozen[budget], "finetuned": out,
          "train_seconds": seconds}


if __name__ == "__main__":
  main()
