"""Agile modelling benchmark: from one example per class to a detector, by a simulated
annotator who answers from the ground truth (bench/make_agile_archive.py's events.csv).

For each seed (a different starting example per class) and each strategy, rounds of K
proposed windows per class are labelled: a window is a positive of a class when it overlaps
one of its words by more than half of the shorter of the two, else a negative of it. After
each budget (labels per class) the figures are taken, per class:

  ap            average precision over ALL windows of the archive (labelled ones included;
                each window's truth as the annotator would answer)
  ap_untouched  average precision over the windows no label of the class touches (what the
                labels cannot have taught by rote; a strategy that labels many positives
                leaves the harder ones here)
  precision, recall   over all windows, at the threshold `learn` chose

  search    nearest neighbours of the positives (max cosine similarity to any labelled
            positive window); the next K are the best unlabelled windows
  top, margin, mixed, hybrid   `learn` on the labels so far, then `rank --strategy=...`
            (hybrid: search's proposals until a class has learn.HYBRID_POSITIVES positive
            labels, then top's)

Seeds pair the strategies (the same starting examples), so beside each mean and its t 95%
interval over seeds the report gives the paired difference of every learn strategy from
search and from perch-hoplite's classifier on its labels.

Then the labels of one strategy at the largest budget (`--finetune_on`, default the best by
mean AP) are exported (search labels --export), aiSFX is fine-tuned on them (python -m
jaxaudio.main, the default recipe, the recording as group), the archive is re-indexed with the
fine-tuned model and `learn` runs again on the same labels: the same figures with the
fine-tuned embedding, for each seed of `--finetune_seeds`.

  python bench/make_agile_archive.py --out=/tmp/agile
  python bench/agile.py --archive=/tmp/agile --work=/tmp/agile-work --seeds=5

Each (strategy, seed) keeps its labels in WORK/labels-STRATEGY-SEED.sqlite and its figures in
WORK/results-STRATEGY-SEED.json, each fine-tune its figures in WORK/finetune-STRATEGY-SEED.json;
`--reuse` takes what is there (labels are replayed budget by budget in the order they were
given, and evaluated afresh) instead of running it again, so parts can run in separate
processes and one last run with --reuse prints the whole report.

The reference, perch-hoplite's own linear classifier (perch_hoplite.agile.classifier.
train_linear_classifier), is trained on the same embeddings and the same labels (those of
each strategy in `--hoplite_on`, at every budget) in its own virtual environment
(bench/hoplite_reference.py: its wheel pins ml-collections<0.2 and absl-py<2 against jaxaudio's
stack), fed with files:

  python bench/agile.py ... --hoplite_python=/root/hoplite-venv/bin/python --hoplite_on=top,hybrid
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
STRATEGIES = ("search", "top", "margin", "mixed", "hybrid")
LEARNED = learn.STRATEGIES


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


def figures(scores, truth_j, untouched, threshold=None) -> dict[str, float]:
  """AP over all windows and over the `untouched` ones; precision / recall at `threshold`."""
  out = {"ap": float(average_precision_score(truth_j, scores)),
         "ap_untouched": float(average_precision_score(truth_j[untouched], scores[untouched]))}
  if threshold is not None:
    pred = scores >= threshold
    out["precision"] = float(truth_j[pred].mean()) if pred.any() else float("nan")
    out["recall"] = float(pred[truth_j].mean())
  return out


def hoplite(args, archive, truth, classes, labels, tag) -> dict[str, dict[str, float]]:
  """Figures of perch-hoplite's classifier trained on `labels` (bench/hoplite_reference.py);
  its output is kept beside the labels it was trained on and reused for the same labels."""
  arrays = os.path.join(args.work, "hoplite-in.npz")
  if not os.path.exists(arrays):
    np.savez(arrays, embeddings=archive.embeddings, file_of_row=archive.file_of_row,
             offsets=archive.offsets, hop=archive.hop_seconds)
  lab_file = os.path.join(args.work, f"hoplite-labels-{tag}.json")
  wanted = json.dumps([{"row": row_of(archive, lab), "label": lab.label,
                        "positive": lab.positive} for lab in labels])
  out = os.path.join(args.work, f"hoplite-out-{tag}.npz")
  same = os.path.exists(lab_file) and os.path.exists(out) and sorted(
      json.load(open(lab_file)), key=json.dumps) == sorted(json.loads(wanted), key=json.dumps)
  if not same:
    with open(lab_file, "w") as f:
      f.write(wanted)
    run([args.hoplite_python, os.path.join(ROOT, "bench", "hoplite_reference.py"), arrays,
         lab_file, out])
  got = np.load(out)
  names = [str(c) for c in got["classes"]]
  return {c: figures(got["logits"][:, names.index(c)], truth[:, j],
                     ~labelled_mask(archive, labels, c))
          for j, c in enumerate(classes)}


def one_run(index, archive, truth, classes, strategy, seed, k, db_url):
  """{budget: {class: figures}} of one strategy and seed, labelling as it goes."""
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
        score = search_scores(archive, labels, c)
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
      results[count] = evaluate(index, archive, truth, classes, strategy, labels)
      print(f"  seed {seed} {strategy:6s} {count:3d} labels/class: " + ", ".join(
          f"{c} AP {results[count][c]['ap']:.3f}" for c in classes), flush=True)
  db.close()
  return results


def at_budget(labels: list[Label], classes, budget) -> list[Label]:
  """The first `budget` labels of each class in the order they were given."""
  out = []
  for c in classes:
    mine = sorted((lab for lab in labels if lab.label == c), key=lambda lab: lab.created)
    out += mine[:budget]
  return out


def replay(index, archive, truth, classes, strategy, db_url):
  """The figures of a finished run's labels, budget by budget (None if it did not finish)."""
  db = LabelStore(db_url)
  labels = db.all()
  db.close()
  if any(sum(lab.label == c for lab in labels) < max(BUDGETS) for c in classes):
    return None
  return {b: evaluate(index, archive, truth, classes, strategy, at_budget(labels, classes, b))
          for b in BUDGETS}


def search_scores(archive, labels, c) -> np.ndarray:
  return learn.similarity(archive.embeddings, [row_of(archive, lab) for lab in labels
                                               if lab.label == c and lab.positive])


def evaluate(index, archive, truth, classes, strategy, labels):
  out = {}
  if strategy == "search":
    for j, c in enumerate(classes):
      out[c] = figures(search_scores(archive, labels, c), truth[:, j],
                       ~labelled_mask(archive, labels, c))
    return out
  for clf in learn.learn(index, classes, labels, archive=archive):
    j = classes.index(clf.label)
    out[clf.label] = figures(clf.scores(archive.embeddings), truth[:, j],
                             ~labelled_mask(archive, labels, clf.label), clf.threshold)
  return out


def interval(values) -> tuple[float, float, float]:
  """Mean and a t 95% interval over seeds."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), float("nan"), float("nan")
  h = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
  return float(v.mean()), float(v.mean() - h), float(v.mean() + h)


def _cell(values) -> str:
  m, lo, hi = interval(values)
  return f"{m:.3f} ({lo:.3f} to {hi:.3f})"


def _mean_of(r, budget, classes, key) -> float:
  return float(np.nanmean([r[budget][c].get(key, np.nan) for c in classes]))


def table(all_results, classes, budgets) -> str:
  """Mean over classes, then mean and t 95% interval over seeds."""
  lines = ["| strategy | labels/class | mean AP, all windows | mean AP, untouched windows | "
           "mean precision@thr |", "|---|---:|---:|---:|---:|"]
  for strategy, per_seed in all_results.items():
    for b in budgets:
      if not all(b in r for r in per_seed):
        continue
      prec = [_mean_of(r, b, classes, "precision") for r in per_seed]
      lines.append(f"| {strategy} | {b} | {_cell([_mean_of(r, b, classes, 'ap') for r in per_seed])}"
                   f" | {_cell([_mean_of(r, b, classes, 'ap_untouched') for r in per_seed])} | "
                   + ("" if np.all(np.isnan(prec)) else _cell(prec)) + " |")
  return "\n".join(lines)


def class_table(all_results, classes, budgets, key="ap") -> str:
  lines = ["| strategy | labels/class | " + " | ".join(classes) + " |",
           "|---|---:|" + "---:|" * len(classes)]
  for strategy, per_seed in all_results.items():
    for b in budgets:
      if all(b in r for r in per_seed):
        lines.append(f"| {strategy} | {b} | " + " | ".join(
            _cell([r[b][c][key] for r in per_seed]) for c in classes) + " |")
  return "\n".join(lines)


def paired_table(all_results, classes, budgets) -> str:
  """Each learn strategy minus search, and minus hoplite on its own labels, seed by seed."""
  lines = ["| strategy | minus | labels/class | mean AP, all windows | mean AP, untouched |",
           "|---|---|---:|---:|---:|"]
  for strategy in all_results:
    if strategy not in LEARNED:
      continue
    others = [o for o in ("search", f"hoplite ({strategy}'s labels)") if o in all_results]
    for other in others:
      for b in budgets:
        a, o = all_results[strategy], all_results[other]
        if len(a) != len(o) or not all(b in r for r in a + o):
          continue
        cells = [_cell([_mean_of(x, b, classes, key) - _mean_of(y, b, classes, key)
                        for x, y in zip(a, o)]) for key in ("ap", "ap_untouched")]
        lines.append(f"| {strategy} | {other} | {b} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _load(path):
  with open(path) as f:
    return {int(b): v for b, v in json.load(f).items()}


def _save(path, results):
  with open(path, "w") as f:
    json.dump({str(b): v for b, v in results.items()}, f, indent=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archive", required=True)
  parser.add_argument("--work", required=True)
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--seed_list", default="", help="run only these seeds (comma-separated; "
                      "default all --seeds): several processes can take some seeds each, and "
                      "a last one with --reuse gathers them")
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--strategies", default=",".join(STRATEGIES))
  parser.add_argument("--reuse", action="store_true", help="take the figures, labels and "
                      "fine-tunes already in --work instead of running them again")
  parser.add_argument("--finetune", action="store_true", help="fine-tune on a strategy's "
                      "labels, re-index, learn again")
  parser.add_argument("--finetune_on", default="", help="the strategy whose labels the "
                      "fine-tune takes (default: the best learn strategy by mean AP at 200)")
  parser.add_argument("--finetune_seeds", default="0", help="the seeds to fine-tune for, "
                      "comma-separated (each is its own training run: several processes can "
                      "take one seed each, and a last one with --reuse gathers them)")
  parser.add_argument("--hoplite_python", default="", help="python of a virtual environment "
                      "with perch-hoplite and tensorflow-cpu: run the reference classifier")
  parser.add_argument("--hoplite_on", default="top", help="the strategies (comma-separated) "
                      "whose labels the reference classifier is trained on")
  args = parser.parse_args()
  os.makedirs(args.work, exist_ok=True)
  py = sys.executable
  base = os.path.join(args.work, "base")
  if not os.path.isdir(os.path.join(base, "checkpoints")):   # pretrained aiSFX, as it starts
    run([py, "-m", "jaxaudio.main", "--config=configs/finetune.py", f"--workdir={base}",
         "--config.train.num_steps=1", "--config.evaluate.at_end=False"])
  index = os.path.join(args.work, "index")
  t = time.perf_counter()
  if not (args.reuse and os.path.isfile(os.path.join(index, "index.json"))):
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
  dbs = {}
  hoplite_on = [s for s in args.hoplite_on.split(",") if s] if args.hoplite_python else []
  for strategy in args.strategies.split(","):
    all_results[strategy] = []
    for seed in ([int(x) for x in args.seed_list.split(",")] if args.seed_list
                 else range(args.seeds)):
      db_file = os.path.join(args.work, f"labels-{strategy}-{seed}.sqlite")
      db = dbs[(strategy, seed)] = f"sqlite:///{db_file}"
      cached = os.path.join(args.work, f"results-{strategy}-{seed}.json")
      res = None
      if args.reuse and os.path.exists(cached):
        res = _load(cached)
      elif args.reuse and os.path.exists(db_file):
        res = replay(index, archive, truth, classes, strategy, db)
        if res is not None:
          print(f"  seed {seed} {strategy:6s} replayed from {db_file}: " + ", ".join(
              f"{c} AP {res[max(BUDGETS)][c]['ap']:.3f}" for c in classes), flush=True)
      if res is None:
        if os.path.exists(db_file):
          os.remove(db_file)
        res = one_run(index, archive, truth, classes, strategy, seed, args.k, db)
      _save(cached, res)
      all_results[strategy].append(res)
      if strategy in hoplite_on:
        store_ = LabelStore(db)
        labels = store_.all()
        store_.close()
        ref = {b: hoplite(args, archive, truth, classes, at_budget(labels, classes, b),
                          f"{strategy}-{seed}-{b}") for b in BUDGETS}
        print(f"  seed {seed} hoplite on {strategy}'s labels: " + ", ".join(
            f"{c} AP {ref[max(BUDGETS)][c]['ap']:.3f}" for c in classes), flush=True)
        all_results.setdefault(f"hoplite ({strategy}'s labels)", []).append(ref)
  report = {"windows": int(len(archive.offsets)), "window_seconds": archive.window_seconds,
            "positive_windows": dict(zip(classes, truth.sum(0).tolist())),
            "results": {s: [{str(b): v for b, v in r.items()} for r in rs]
                        for s, rs in all_results.items()}}
  print(table(all_results, classes, BUDGETS))
  print(class_table(all_results, classes, BUDGETS))
  print(paired_table(all_results, classes, BUDGETS))
  if args.finetune:
    learned = [s for s in all_results if s in LEARNED]
    best = args.finetune_on or max(learned, key=lambda s: np.mean(
        [_mean_of(r, max(BUDGETS), classes, "ap") for r in all_results[s]]))
    report["finetune"] = []
    for seed in [int(x) for x in args.finetune_seeds.split(",")]:
      report["finetune"].append(finetune(args, py, events, classes, best, seed, dbs[(best, seed)],
                                         all_results[best][seed]))
    print(finetune_table(report["finetune"], classes))
  with open(os.path.join(args.work, "agile.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {os.path.join(args.work, 'agile.json')}")


def finetune(args, py, events, classes, strategy, seed, db, frozen):
  """Fine-tune aiSFX on one seed's labels of `strategy`, re-index, learn again."""
  cached = os.path.join(args.work, f"finetune-{strategy}-{seed}.json")
  if args.reuse and os.path.exists(cached):
    with open(cached) as f:
      return json.load(f)
  tag = f"{strategy}-{seed}"
  csv_path = os.path.join(args.work, f"labels-{tag}.csv")
  db_store = LabelStore(db)
  labels = db_store.all()
  db_store.close()
  agile_rows = agile.export_rows(labels)
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=agile.EXPORT_COLUMNS)
    w.writeheader()
    w.writerows(agile_rows)
  run_dir = os.path.join(args.work, f"finetuned-{tag}")
  t = time.perf_counter()
  run([py, "-m", "jaxaudio.main", "--config=configs/finetune.py", f"--workdir={run_dir}",
       f"--config.data.source=csv:{csv_path}", "--config.evaluate.at_end=False"])
  seconds = time.perf_counter() - t
  tuned = os.path.join(args.work, f"index-finetuned-{tag}")
  t = time.perf_counter()
  run([py, "-m", "jaxaudio.search", "index", f"--workdir={run_dir}",
       f"--audio={args.archive}", f"--index={tuned}"])
  index_seconds = time.perf_counter() - t
  tuned_archive = learn.open_archive(tuned)
  truth = window_truth(tuned_archive, events, classes)
  out = {}
  for clf in learn.learn(tuned, classes, labels, archive=tuned_archive):
    j = classes.index(clf.label)
    out[clf.label] = figures(clf.scores(tuned_archive.embeddings), truth[:, j],
                             ~labelled_mask(tuned_archive, labels, clf.label), clf.threshold)
  with open(os.path.join(run_dir, "report", "test_metrics.json")) as f:
    test = json.load(f)
  budget = max(BUDGETS)
  print(f"fine-tuned on {len(agile_rows)} labelled spans ({strategy}, seed {seed}) in "
        f"{seconds:.0f} s (test mAP {test['mAP']:.3f}), re-indexed in {index_seconds:.0f} s:")
  for c in classes:
    print(f"  {c}: AP frozen {frozen[budget][c]['ap']:.3f} -> fine-tuned {out[c]['ap']:.3f}; "
          f"untouched {frozen[budget][c]['ap_untouched']:.3f} -> {out[c]['ap_untouched']:.3f}; "
          f"precision@thr {frozen[budget][c].get('precision', float('nan')):.3f} -> "
          f"{out[c]['precision']:.3f}", flush=True)
  result = {"strategy": strategy, "seed": seed, "spans": len(agile_rows),
            "frozen": frozen[budget], "finetuned": out, "train_seconds": seconds,
            "index_seconds": index_seconds, "test_mAP": test["mAP"],
            "validation_mAP": test.get("validation_score", {}).get("mAP")}
  with open(cached, "w") as f:
    json.dump(result, f, indent=1)
  return result


def finetune_table(runs, classes) -> str:
  """Per class: frozen and fine-tuned (mean and interval over seeds), the paired difference,
  and on how many seeds the fine-tuned embedding's classifier is ahead."""
  lines = ["| class | figure | frozen | fine-tuned | fine-tuned minus frozen | seeds ahead |",
           "|---|---|---:|---:|---:|---:|"]
  for c in classes:
    for key in ("ap", "ap_untouched", "precision"):
      a = [r["frozen"][c][key] for r in runs]
      b = [r["finetuned"][c][key] for r in runs]
      lines.append(f"| {c} | {key} | {_cell(a)} | {_cell(b)} | "
                   f"{_cell(np.subtract(b, a))} | {sum(y > x for x, y in zip(a, b))}/{len(runs)} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
