"""Rank pretrained models on a user's own labelled audio before fine-tuning any of them.

For each candidate the data is prepared with the model's own frontend (cached like any
run's), every train and validation window is embedded once with the pretrained weights, and
the clips of those two splits are dealt into K folds (whole groups per fold with
data.group, a CSV's fold column where it has one: the same folds for every model, so scores
pair up). Per fold, a linear probe (the trainer's head: dropout -> Dense, its loss, label
smoothing, weight decay and batch size) trains on the other folds' window embeddings and is
scored on the fold's clips (mean window probabilities, as the evaluation aggregates);
retrieval mAP ranks the fold's clips by cosine similarity of their mean-pooled embeddings.
The test split is never read.

The probe must converge, or the ranking rewards whichever embedding a slow optimiser happens
to like: its inputs are standardised with the training folds' mean and std (models differ in
embedding scale by orders of magnitude), and it has a learning rate and step count of its own
(PROBE_LR, --probe_steps); the trainer's 3e-4 is tuned for fine-tuning a backbone and leaves
a probe far from its optimum in a few hundred steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
import time
from typing import Any

import ml_collections
import numpy as np
from scipy import stats

from jaxaudio.models import outputs
from jaxaudio.train import forward
from jaxaudio.data import pipeline, sources, splits
from jaxaudio.data.prepare import Prepared, prepare
from jaxaudio.inference.embedder import Embedder
from jaxaudio.runtime.errors import ConfigError, DataError
from jaxaudio.evaluation import metrics, report, retrieval
from jaxaudio.models.registry import ModelInfo, get_model, param_count
from jaxaudio.weights.pretrained import pretrained_variables
from jaxaudio.train.probe import fit_probe
from jaxaudio.runtime.bundle import write_bundle

log = logging.getLogger("jaxaudio")

METRICS = ("accuracy", "macro_f1", "mAP")
POOL = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Candidate:
  info: ModelInfo
  checkpoint: str | None = None

  @property
  def label(self) -> str:
    return self.info.name


def parse_candidates(text: str) -> list[Candidate]:
  """"aisfx,musicnn_msd,panns_cnn14:PATH" -> candidates; one sentence on a bad entry."""
  out = []
  for item in (s.strip() for s in text.split(",")):
    if not item:
      continue
    name, _, path = item.partition(":")
    info = get_model(name)
    if info.source == "path" and not path:
      raise ConfigError(f"--models entry '{name}' needs its official checkpoint: write "
                        f"{name}:PATH (docs/reference/models.md says where to download it).")
    if path and not os.path.exists(os.path.expanduser(path)):
      raise ConfigError(f"--models entry '{item}': no such checkpoint {path}; check the path.")
    out.append(Candidate(info, os.path.expanduser(path) if path else None))
  if not out:
    raise ConfigError("--models is empty; name at least one model, e.g. --models=aisfx.")
  names = [c.label for c in out]
  if len(set(names)) != len(names):
    raise ConfigError(f"--models names a model twice ({', '.join(names)}); list each once.")
  return out


def pool_folds(cfg: ml_collections.ConfigDict, folds: int) -> tuple[dict[str, int], bool]:
  """(fold 1..K of every train and validation clip key, grouped) from the data listing;
  refuses a pool too small for K folds."""
  if folds < 2:
    raise ConfigError(f"--folds={folds} is too few; use 2 or more (5 is usual).")
  listing = sources.list_source(cfg.data)
  pool = [c for c in listing.clips if c.split in POOL]
  grouped = any(c.group for c in pool)
  if not listing.multi_label:
    counts: dict[str, int] = {}
    for c in pool:
      counts[c.labels[0]] = counts.get(c.labels[0], 0) + 1
    small = min(counts, key=counts.get)
    if counts[small] < folds:
      raise DataError(f"{listing.source}: class '{small}' has {counts[small]} train and "
                      f"validation clips, fewer than the {folds} folds; use "
                      f"--folds={max(2, counts[small])} or add clips of that class.")
  elif len(pool) < 2 * folds:
    raise DataError(f"{listing.source}: {len(pool)} train and validation clips are too few "
                    f"for {folds} folds; use fewer folds or add clips.")
  return splits.clip_folds(pool, folds, cfg.data, listing.source), grouped


def embed_pool(prepared: Prepared, embedder: Embedder, batch_size: int
               ) -> tuple[dict[str, np.ndarray], float]:
  """Window embeddings, labels and clip keys of the train and validation splits, and the
  seconds the forward passes took (compiled beforehand, so this is throughput)."""
  spec = prepared.spec
  embedder.embed_windows(np.zeros((1, spec.frames_per_window, spec.n_mels), np.float32))
  start = time.perf_counter()
  parts = []
  for split in POOL:
    if prepared.num_windows(split) == 0:
      continue
    out = forward.collect(lambda b: {"embedding": embedder.embed_windows(b["mel"])},
                          pipeline.eval_batches(prepared, split, batch_size), ("embedding",))
    keys = np.array(prepared.meta["splits"][split]["clip_keys"])
    parts.append({"embedding": out["embedding"], "label": out["label"],
                  "key": keys[out["clip"]]})
  pool = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return pool, time.perf_counter() - start


def _clip_scores(logits: np.ndarray, labels: np.ndarray, keys: np.ndarray, num_classes: int,
                 multi_label: bool) -> dict[str, float]:
  """Clip-level classification scores: mean window probabilities per clip."""
  _, mean, first = outputs.group_mean(outputs.probabilities(logits, multi_label), keys)
  labels = labels[first]
  if multi_label:
    eps = 1e-12
    s = metrics.multilabel_scores(labels, np.log(mean + eps) - np.log1p(-mean + eps))
    return {"macro_f1": s["macro_f1"], "micro_f1": s["micro_f1"], "probe_mAP": s["mAP"]}
  cm = metrics.ConfusionMatrix.from_model_output(logits=np.log(mean + 1e-12), labels=labels)
  s = cm.compute()
  return {"accuracy": float(s["accuracy"]), "macro_f1": float(s["macro_f1"])}


def score_folds(pool: dict[str, np.ndarray], fold_of: dict[str, int], folds: int,
                num_classes: int, multi_label: bool, train_cfg, steps: int
                ) -> list[dict[str, float]]:
  """Probe and retrieval scores of every fold (see module docstring)."""
  fold = np.array([fold_of[k] for k in pool["key"]])
  x = pool["embedding"].astype(np.float64)
  out = []
  for k in range(1, folds + 1):
    tr, te = fold != k, fold == k
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    z = ((x - mean) / std).astype(np.float32)
    logits_fn = fit_probe(z[tr], pool["label"][tr], num_classes, multi_label, train_cfg,
                          steps, seed=int(train_cfg.seed) + k)
    row = _clip_scores(logits_fn(z[te]), pool["label"][te], pool["key"][te], num_classes,
                       multi_label)
    _, clip_emb = retrieval.clip_embeddings(pool["embedding"][te], pool["key"][te])
    _, first = np.unique(pool["key"][te], return_index=True)   # clip_embeddings' order
    row["mAP"] = retrieval.retrieval_scores(clip_emb, pool["label"][te][first])["mAP"]
    row["clips"] = int(len(first))
    out.append(row)
  return out


def paired(a: list[float], b: list[float]) -> dict[str, float]:
  """Paired comparison over folds of scores a (the recommended model) and b: mean difference,
  its 95% t-interval and the two-sided paired t-test's p-value."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  k = len(d)
  sd = float(d.std(ddof=1)) if k > 1 else 0.0
  half = float(stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)) if k > 1 and sd > 0 else 0.0
  p = float(stats.ttest_rel(a, b).pvalue) if k > 1 and sd > 0 else (1.0 if d.mean() == 0
                                                                     else 0.0)
  return {"mean_difference": float(d.mean()), "ci95": [float(d.mean() - half),
                                                      float(d.mean() + half)],
          "p_value": p, "within_noise": bool(d.mean() - half <= 0.0)}


def evaluate_candidate(cfg: ml_collections.ConfigDict, cand: Candidate, fold_of: dict[str, int],
                       folds: int, steps: int, batch_size: int) -> dict[str, Any]:
  """Prepare, embed and score one candidate; the row select.json holds for it."""
  info = cand.info
  prepared, built = prepare(cfg.data, info.spec)
  log.info("%s: %s data at %s", info.name, "prepared" if built else "reusing prepared",
           prepared.root)
  variables, meta = pretrained_variables(info, cand.checkpoint)
  embedder = Embedder(info, variables, batch_size=batch_size)
  pool, seconds = embed_pool(prepared, embedder, batch_size)
  log.info("%s: embedded %d windows in %.1f s (%.1f windows/s)", info.name,
           len(pool["key"]), seconds, len(pool["key"]) / seconds)
  per_fold = score_folds(pool, fold_of, folds, len(prepared.classes), prepared.multi_label,
                         cfg.train, steps)
  row: dict[str, Any] = {"name": info.name, "checkpoint": cand.checkpoint,
                         "description": info.description, "embedding_dim": int(embedder.dim),
                         "params": param_count(variables["params"]),
                         "sample_rate": info.spec.sample_rate,
                         "window_seconds": round(info.spec.window_seconds, 3),
                         "windows": int(len(pool["key"])), "embed_seconds": seconds,
                         "windows_per_second": len(pool["key"]) / seconds,
                         "prepared": prepared.root, "weights_sha256": meta.get("source_sha256"),
                         "folds": per_fold}
  for key in per_fold[0]:
    if key == "clips":
      continue
    values = [f[key] for f in per_fold]
    row[key] = float(np.mean(values))
    row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return row


def recommend(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
  """The best mean by `metric`, and how the runner-up compares, paired over folds."""
  if any(metric not in r for r in rows):
    raise ConfigError(f"--metric={metric} is not measured on this data (multi-label data has "
                      f"no accuracy); use one of {', '.join(k for k in METRICS if k in rows[0])}.")
  ranked = sorted(rows, key=lambda r: -r[metric])
  out: dict[str, Any] = {"recommended": ranked[0]["name"], "ranking": [r["name"] for r in ranked]}
  if len(ranked) > 1:
    best, second = ranked[0], ranked[1]
    out["runner_up"] = {"name": second["name"], **paired(
        [f[metric] for f in best["folds"]], [f[metric] for f in second["folds"]])}
  return out


def finetune_command(argv: list[str], best: dict[str, Any], workdir: str) -> str:
  """`python -m jaxaudio.main ...` that fine-tunes the recommended model on the same data:
  the user's --config and overrides, with the model swapped in."""
  keep = [a for a in argv[1:] if a.startswith("--config") and not
          a.startswith(("--config.model.name", "--config.model.checkpoint"))]
  if not any(a.startswith("--config=") or a == "--config" for a in keep):
    keep.insert(0, "--config=configs/finetune.py")
  keep.append(f"--config.model.name={best['name']}")
  if best.get("checkpoint"):
    keep.append(f"--config.model.checkpoint={best['checkpoint']}")
  keep.append(f"--workdir={os.path.join(workdir, 'finetune_' + best['name'])}")
  return " ".join(["python -m jaxaudio.main"] + [shlex.quote(a) for a in keep])


UNGROUPED_CAUTION = (
    "the folds deal clips at random (no data.group), so clips of one speaker, room, "
    "instrument or recording land on both sides of a fold; if the test split holds sources "
    "the training clips lack, these scores reward memorisation (on held-out instruments an "
    "ungrouped selection scored aiSFX macro-F1 0.95 where its run's test split gave 0.40): "
    "set data.group to what sets them apart.")


def markdown(result: dict[str, Any]) -> str:
  metric, rows = result["metric"], result["models"]
  fmt = lambda r, k: f"{r[k]:.4f} ± {r[k + '_std']:.4f}" if k in r else "n/a"  # noqa: E731
  keys = [k for k in ("accuracy", "macro_f1", "micro_f1", "probe_mAP", "mAP") if k in rows[0]]
  lines = [f"# Which pretrained model fits {result['source']}?", "",
           f"{result['folds']}-fold linear probe and retrieval on the train and validation clips "
           f"({'whole groups per fold' if result['grouped'] else 'stratified by label'}); the "
           "test split was not read. Mean ± sample std over folds; mAP is retrieval "
           "(clips of a fold ranking each other by cosine similarity).", "",
           "| model | " + " | ".join(keys) + " | embedding | params | windows/s |",
           "|---|" + "---:|" * (len(keys) + 3)]
  for r in sorted(rows, key=lambda r: -r[metric]):
    lines.append(f"| {r['name']} | " + " | ".join(fmt(r, k) for k in keys)
                 + f" | {r['embedding_dim']} | {r['params']:,} | {r['windows_per_second']:.1f} |")
  rec = result["recommendation"]
  lines += ["", f"**Recommended: {rec['recommended']}** (best mean {metric})."]
  if "runner_up" in rec:
    ru = rec["runner_up"]
    best, second = (next(r for r in rows if r["name"] == n)
                    for n in (rec["recommended"], ru["name"]))
    cheaper = (second["params"] < best["params"]
               or second["windows_per_second"] > best["windows_per_second"])
    if not ru["within_noise"]:
      verdict = "the folds agree that the recommended model is better"
    elif cheaper:
      verdict = (f"within noise: the folds do not tell them apart, and {second['name']} is "
                 f"cheaper ({second['params']:,} vs {best['params']:,} parameters, "
                 f"{second['windows_per_second']:.0f} vs {best['windows_per_second']:.0f} "
                 "windows/s), so it is a fair choice")
    else:
      verdict = "within noise: the folds do not tell them apart"
    lines.append(f"Runner-up {ru['name']}: {metric} {ru['mean_difference']:.4f} lower on "
                 f"average; 95% interval of the paired difference [{ru['ci95'][0]:+.4f}, "
                 f"{ru['ci95'][1]:+.4f}], paired t-test p = {ru['p_value']:.3f} — {verdict}.")
  if not result["grouped"]:
    lines += ["", f"**Caution:** {UNGROUPED_CAUTION}"]
  lines += ["", "Fine-tune it:", "", "```bash", result["command"], "```"]
  return "\n".join(lines) + "\n"


def figure(result: dict[str, Any]):
  plt = report.pyplot()
  rows = sorted(result["models"], key=lambda r: -r[result["metric"]])
  keys = [k for k in METRICS if k in rows[0]]
  fig, ax = plt.subplots(figsize=(2.0 + 1.1 * len(rows), 3.4), dpi=100)
  width = 0.8 / len(keys)
  xs = np.arange(len(rows))
  for j, key in enumerate(keys):
    ax.bar(xs + j * width, [r[key] for r in rows], width=width,
           yerr=[r[key + "_std"] for r in rows], capsize=3,
           label="retrieval mAP" if key == "mAP" else key)
  ax.set_xticks(xs + 0.4 - width / 2, [r["name"] for r in rows], fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_title(f"pretrained models on {os.path.basename(result['source'])}: "
               f"{result['folds']}-fold probe (mean ± std)", fontsize=9)
  ax.legend(fontsize=7, loc="upper right", ncol=len(keys))
  fig.tight_layout()
  return fig


def write_report(workdir: str, result: dict[str, Any]) -> str:
  """DIR/report/select.{json,md,png} and TensorBoard scalars per model; returns the folder."""
  out = os.path.join(workdir, "report")
  fig = figure(result)
  write_bundle(out, "select", result, markdown(result), {"select": fig})
  writer = report.summary_writer(workdir)
  for i, row in enumerate(result["models"]):
    writer.write_scalars(i, {f"select/{row['name']}/{k}": row[k]
                             for k in (*METRICS, "micro_f1", "probe_mAP", "windows_per_second")
                             if k in row})
  writer.write_images(0, {"select": report.figure_to_array(fig)[None]})
  writer.flush()
  return out


def select(cfg: ml_collections.ConfigDict, workdir: str, candidates: list[Candidate],
           metric: str, folds: int, steps: int, batch_size: int, argv: list[str]
           ) -> dict[str, Any]:
  """Score every candidate on the same folds and write the report (see module docstring)."""
  if metric not in METRICS:
    raise ConfigError(f"--metric={metric} is not one of {', '.join(METRICS)}.")
  workdir = os.path.abspath(workdir)
  fold_of, grouped = pool_folds(cfg, folds)
  log.info("%d train and validation clips in %d folds%s; %d candidate models", len(fold_of),
           folds, " (whole groups per fold)" if grouped else "", len(candidates))
  if not grouped:
    log.warning("caution: %s", UNGROUPED_CAUTION)
  rows = []
  for i, cand in enumerate(candidates, start=1):
    log.info("model %d/%d: %s", i, len(candidates), cand.label)
    rows.append(evaluate_candidate(cfg, cand, fold_of, folds, steps, batch_size))
    r = rows[-1]
    log.info("%s: %s", cand.label, ", ".join(f"{k} {r[k]:.4f} ± {r[k + '_std']:.4f}"
                                              for k in METRICS if k in r))
  rec = recommend(rows, metric)
  best = next(r for r in rows if r["name"] == rec["recommended"])
  result = {"metric": metric, "recommended": rec["recommended"], "source": str(cfg.data.source),
            "folds": folds, "grouped": grouped, "probe_steps": steps, "models": rows,
            "recommendation": rec, "command": finetune_command(argv, best, workdir),
            "test_split_used": False}
  result["report"] = write_report(workdir, result)
  return result
