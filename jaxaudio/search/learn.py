"""Learn in seconds: one-vs-rest linear classifiers on an index's window embeddings, trained
in JAX from the labels kept beside the index, then ranking and detection over the archive.

Targets. A window (row) is a positive of class C when it overlaps a positive label of C by
more than half of the shorter of the two (window, labelled span), an explicit negative when
it overlaps a negative label of C so, and a weak negative of C otherwise: unlabelled windows are
mostly not C, so they count as negatives at a small weight (`weak_weight`, per window), as
perch-hoplite's agile classifier treats them. Class balance: positives carry half of each
class's loss, negatives (explicit and weak together) the other half, whatever the counts.

Threshold. Labelled windows are dealt into folds by file (by labelled span when one file
holds every label), so overlapping windows of one sound never sit on both sides; each fold is
scored by a classifier trained on the others, and the threshold is the one that maximises F1
over those out-of-fold scores of the labelled windows. Precision and recall at it are stated
for the labelled windows (an estimate: which windows got labelled is not a random sample).

Proposals (`rank`). top, margin and mixed order the archive by the classifier's score; hybrid
starts as search does, with the nearest neighbours of the class's positive windows (their best
cosine to any of them; windows that share any audio with a label are skipped, as the
half-overlapping neighbours of a labelled window would come first and hold the same sound),
while the class has fewer than HYBRID_POSITIVES positive labels, then hands over to top. A
linear classifier trained on a handful of positives proposes mostly negatives (the cold start
of active learning), while the neighbours of what was found are positives more often, and
they train a better classifier than the classifier's own proposals do; once it has enough
positives, its top proposals find what search cannot (docs/evidence/agile.md).

A classifier is stored in PATH/classifiers/CLASS.json with the identity of the model whose
embeddings it was trained on; another index's embeddings are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxaudio.runtime.errors import JaxAudioError
from jaxaudio.inference.predictor import Prediction, detect_events
from jaxaudio.search import store
from jaxaudio.search.labels import Label, LabelError

CLASSIFIERS = "classifiers"
WEAK_WEIGHT = 0.05       # per unlabelled window, against 1 per labelled one
MAX_POOL = 65_536        # unlabelled windows drawn (once) as the weak negatives' pool
POOL_BATCH = 2_048       # of which each training step sees a fresh sample
L2 = 1e-4
STEPS = 300
LEARNING_RATE = 0.05
FOLDS = 5
STRATEGIES = ("top", "margin", "mixed", "hybrid")
HYBRID_POSITIVES = 20    # hybrid: nearest neighbours of the positives until a class has these
SIMILARITY_BLOCK = 65_536   # rows per matmul of the positives' similarity


class ClassifierError(JaxAudioError):
  """A stored classifier that is missing or belongs to another model's embeddings."""


@dataclasses.dataclass
class Archive:
  """An index's rows as the classifier needs them."""

  embeddings: np.ndarray      # float32 [N, D], L2-normalised
  offsets: np.ndarray         # float32 [N], window start in seconds
  file_of_row: np.ndarray     # int32 [N]
  files: list[store.Entry]
  window_seconds: float
  hop_seconds: float
  fmax: float                 # the frontend's top frequency (Raven tables draw up to it)
  identity: dict[str, Any]    # model, weights_sha256, embedding_dim

  @property
  def durations(self) -> dict[str, float]:
    return {e.path: e.seconds for e in self.files}

  def file_rows(self) -> dict[str, tuple[int, int]]:
    """{path: (first row, end row)}: rows are stored file by file."""
    out, pos = {}, 0
    for e in self.files:
      out[e.path] = (pos, pos + e.count)
      pos += e.count
    return out


def open_archive(index_path: str) -> Archive:
  manifest = store.read_manifest(index_path)
  return archive_of(manifest, store.load_rows(index_path, manifest))


def archive_of(manifest: store.Manifest, rows: store.Rows) -> Archive:
  """The Archive of rows already loaded (a server's exact searcher holds them)."""
  spec = manifest.model["frontend"]
  window = spec["frames_per_window"] * spec["hop_length"] / spec["sample_rate"]
  hop_frames = max(1, int(round(spec["frames_per_window"]
                                * manifest.model.get("settings", {}).get("window_hop", 0.5))))
  return Archive(rows.embeddings, rows.offsets, rows.file_of_row, rows.files, window,
                 hop_frames * spec["hop_length"] / spec["sample_rate"], float(spec["fmax"]),
                 _identity(manifest))


def _identity(manifest: store.Manifest) -> dict[str, Any]:
  return {k: manifest.model[k] for k in ("model", "weights_sha256", "embedding_dim")}


# Window offsets are stored as float32 (about 1e-4 s off an hour into a file), so an overlap
# within a millisecond of a rule's bound is a tie, not a verdict: with the hop half a window, a
# one-window label's neighbours overlap it by exactly half, and unrounded that tie fell either
# way (a one-window label became 2-3 positives).
TIE_SECONDS = 1e-3


def _overlapping(archive: Archive, rows: dict[str, tuple[int, int]], lab: Label,
                 half_counts: bool = False) -> np.ndarray:
  """Rows of `lab.file` whose window overlaps the span by more than half the shorter of the
  two (a window half outside a long span is mostly something else) -- or, with
  `half_counts`, by half or more (windows an annotator has already half heard)."""
  lo, hi = rows.get(lab.file, (0, 0))
  start = archive.offsets[lo:hi].astype(np.float64)
  end = start + archive.window_seconds
  overlap = np.minimum(end, lab.end) - np.maximum(start, lab.start)
  need = 0.5 * min(archive.window_seconds, lab.end - lab.start)
  if half_counts:
    return lo + np.flatnonzero(overlap >= need - TIE_SECONDS)
  return lo + np.flatnonzero(overlap > need + TIE_SECONDS)


def targets(archive: Archive, labels: Sequence[Label], classes: Sequence[str]
            ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
  """(positive [N, C] bool, negative [N, C] bool, the rows of each label)."""
  n, index = len(archive.offsets), {c: j for j, c in enumerate(classes)}
  pos, neg = np.zeros((n, len(classes)), bool), np.zeros((n, len(classes)), bool)
  rows = archive.file_rows()
  spans = []
  for lab in labels:
    hit = _overlapping(archive, rows, lab)
    spans.append(hit)
    if lab.label in index:
      (pos if lab.positive else neg)[hit, index[lab.label]] = True
  neg &= ~pos   # a window holding the sound somewhere is a positive
  return pos, neg, spans


@functools.partial(jax.jit, static_argnames=("batch",))
def _fit(x, pos, neg, weak, train, pool, n_pool, weak_weight, l2, key, batch):
  """Weighted one-vs-rest logistic regression by Adam: the labelled rows `x` [L, D] (masks
  [L, C]; `train` [L] picks a fold's training rows, padding is 0) every step, and `batch`
  rows sampled afresh each step from `pool` [M, D] of unlabelled windows, which stand for
  all `n_pool` of them. Returns (W [D, C], b [C])."""
  pos, neg, weak = (m.astype(jnp.float32) * train[:, None] for m in (pos, neg, weak))
  n_pos = jnp.maximum(pos.sum(0), 1.0)
  mass = neg.sum(0) + weak_weight * (weak.sum(0) + n_pool)     # the negatives' total weight
  w_lab = 0.5 * pos / n_pos + 0.5 * (neg + weak_weight * weak) / jnp.maximum(mass, 1e-6)
  w_pool = 0.5 * weak_weight * n_pool / batch / jnp.maximum(mass, 1e-6)    # per sampled row
  prior = jnp.clip(pos.sum(0) / (pos.sum(0) + neg.sum(0) + weak.sum(0) + n_pool), 1e-4,
                   1 - 1e-4)
  params = {"w": jnp.zeros((x.shape[1], pos.shape[1])), "b": jnp.log(prior / (1 - prior))}
  opt = optax.adam(LEARNING_RATE)

  def loss(p, rows):
    bce = optax.sigmoid_binary_cross_entropy(x @ p["w"] + p["b"], pos)
    unlabelled = optax.sigmoid_binary_cross_entropy(rows @ p["w"] + p["b"], 0.0)
    return ((jnp.sum(w_lab * bce) + jnp.sum(w_pool * unlabelled)) / pos.shape[1]
            + l2 * jnp.sum(p["w"] ** 2))

  def step(carry, k):
    p, state = carry
    rows = pool[jax.random.randint(k, (batch,), 0, pool.shape[0])]
    updates, state = opt.update(jax.grad(loss)(p, rows), state, p)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, STEPS))
  return params["w"], params["b"]


def _padded(n: int) -> int:
  """Row counts padded to 1/8-octave steps, so re-learns with a few more labels reuse the
  compiled program."""
  if n <= 256:
    return 256
  step = 2 ** (int(math.log2(n)) - 3)
  return int(math.ceil(n / step) * step)


class _Problem:
  """The labelled rows and the unlabelled pool on the device, padded once, so every fold
  and the final fit run the same compiled program."""

  def __init__(self, x, pos, neg, weak, pool, n_pool, weak_weight, l2, seed):
    n = len(x)
    size = _padded(n)
    pad = lambda a: np.concatenate([a, np.zeros((size - n,) + a.shape[1:], a.dtype)])  # noqa: E731
    self.n = n
    self.x, self.pos, self.neg, self.weak = (jnp.asarray(pad(a)) for a in (x, pos, neg, weak))
    if not len(pool):   # nothing unlabelled: one zero row that carries no weight
      pool, n_pool = np.zeros((1, x.shape[1]), np.float32), 0
    self.pool, self.n_pool = jnp.asarray(pool), float(n_pool)
    self.batch = int(min(POOL_BATCH, len(pool)))
    self.weak_weight, self.l2 = float(weak_weight), float(l2)
    self.key = jax.random.PRNGKey(seed)

  def fit(self, train: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) trained on the labelled rows where `train` is True (all by default)."""
    mask = np.zeros(self.x.shape[0], np.float32)
    mask[:self.n] = 1.0 if train is None else train
    self.key, k = jax.random.split(self.key)
    w, b = _fit(self.x, self.pos, self.neg, self.weak, jnp.asarray(mask), self.pool,
                jnp.float32(self.n_pool), jnp.float32(self.weak_weight), jnp.float32(self.l2),
                k, batch=self.batch)
    return np.asarray(w), np.asarray(b)


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
  """(threshold, precision, recall) maximising F1 of `scores >= threshold` against `truth`;
  the threshold sits midway between the cut score and the next lower one."""
  order = np.argsort(-scores, kind="stable")
  s, t = scores[order], truth[order].astype(np.float64)
  tp = np.cumsum(t)
  precision = tp / np.arange(1, len(t) + 1)
  recall = tp / max(t.sum(), 1.0)
  f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
  last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])   # only cut between distinct scores
  i = int(last[np.argmax(f1[last])])
  below = s[i + 1] if i + 1 < len(s) else s[i] - 1e-3
  return float(0.5 * (s[i] + below)), float(precision[i]), float(recall[i])


@dataclasses.dataclass
class Classifier:
  """One class's linear classifier over an index's embeddings."""

  label: str
  weights: np.ndarray    # float32 [D]
  bias: float
  threshold: float       # probability
  identity: dict[str, Any]
  stats: dict[str, Any]  # labels, windows, cross-validated precision/recall, seconds

  def scores(self, embeddings: np.ndarray) -> np.ndarray:
    return _sigmoid(embeddings @ self.weights + self.bias).astype(np.float32)

  def save(self, index_path: str) -> str:
    folder = os.path.join(index_path, CLASSIFIERS)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{_slug(self.label)}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump({"label": self.label, "weights": self.weights.tolist(), "bias": self.bias,
                 "threshold": self.threshold, "model": self.identity, "stats": self.stats}, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    store.fsync_path(folder)
    return path


def load_classifier(index_path: str, label: str, archive: Archive) -> Classifier:
  path = os.path.join(index_path, CLASSIFIERS, f"{_slug(label)}.json")
  if not os.path.isfile(path):
    raise ClassifierError(f"{index_path} has no classifier for {label!r}; train it with "
                          f"python -m jaxaudio.search learn --index={index_path} "
                          f"--label={label}.")
  with open(path) as f:
    raw = json.load(f)
  if raw["model"] != archive.identity:
    raise ClassifierError(
        f"the classifier for {label!r} was trained on embeddings of {raw['model']['model']} "
        f"(weights sha256 {raw['model']['weights_sha256'][:12]}...), not on this index's "
        f"{archive.identity['model']} ({archive.identity['weights_sha256'][:12]}...); run "
        "learn again on this index (the labels carry over).")
  return Classifier(raw["label"], np.asarray(raw["weights"], np.float32), float(raw["bias"]),
                    float(raw["threshold"]), raw["model"], raw["stats"])


def _slug(label: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label) or "_"


def _folds(labels: Sequence[Label], spans: list[np.ndarray], n: int, folds: int,
           seed: int) -> np.ndarray:
  """Fold (0..K-1) of every row touched by a label, -1 elsewhere: whole files per fold, or
  whole labelled spans when one file holds all labels."""
  keys = [lab.file for lab in labels]
  if len(set(keys)) < 2:
    keys = [f"{lab.file}@{lab.start}" for lab in labels]
  groups = sorted(set(keys))
  rng = np.random.default_rng(seed)
  fold_of_group = dict(zip(groups, rng.permutation(len(groups)) % folds))
  fold = np.full(n, -1, np.int32)
  for key, rows in zip(keys, spans):
    fold[rows] = np.where(fold[rows] < 0, fold_of_group[key], fold[rows])
  return fold


def learn(index_path: str, classes: Sequence[str], labels: Sequence[Label],
          weak_weight: float = WEAK_WEIGHT, folds: int = FOLDS, seed: int = 0,
          archive: Archive | None = None) -> list[Classifier]:
  """Train on `labels` (a LabelStore's), cross-validate the threshold of, and store in the
  index one classifier per class."""
  t0 = time.perf_counter()
  archive = archive or open_archive(index_path)
  classes = list(dict.fromkeys(classes))
  for c in classes:
    have = [lab for lab in labels if lab.label == c]
    if not any(lab.positive for lab in have):
      raise LabelError(f"class {c!r} has no positive label{' (only negatives)' if have else ''}; "
                       f"label at least one window that holds it (python -m jaxaudio.search "
                       f"label ... --label={c}) before learn.")
  pos, neg, spans = targets(archive, labels, classes)
  for j, c in enumerate(classes):
    if not pos[:, j].any():
      raise LabelError(f"class {c!r}: no indexed window overlaps its positive labels (the "
                       "files changed, or the spans are shorter than the index's windows "
                       "allow); label spans inside indexed files.")
  labelled = pos.any(1) | neg.any(1)
  labelled[np.concatenate(spans)] = True
  rng = np.random.default_rng(seed)
  unlabelled = np.flatnonzero(~labelled)
  pool_rows = np.sort(rng.choice(unlabelled, min(MAX_POOL, len(unlabelled)), replace=False))
  rows = np.flatnonzero(labelled)
  x, p, ng = archive.embeddings[rows], pos[rows], neg[rows]
  weak = ~(p | ng)          # weak for a class: labelled, but not for it
  problem = _Problem(x, p, ng, weak, archive.embeddings[pool_rows], len(unlabelled),
                     weak_weight, L2, seed)
  fold_of_row = _folds(labels, spans, len(pos), folds, seed)[rows]
  k = len(np.unique(fold_of_row))
  oof = np.full(p.shape, np.nan, np.float32)
  if k >= 2:
    for f in np.unique(fold_of_row):
      held = fold_of_row == f
      w, b = problem.fit(~held)
      oof[held] = _sigmoid(x[held] @ w + b)
  w, b = problem.fit()
  out = []
  for j, c in enumerate(classes):
    truth_rows = np.flatnonzero(p[:, j] | ng[:, j])
    judged = truth_rows[~np.isnan(oof[truth_rows, j])]
    if k >= 2 and p[judged, j].any() and (~p[judged, j]).any():
      threshold, precision, recall = best_threshold(oof[judged, j], p[judged, j])
      how = f"{k}-fold cross-validation by {'file' if len({l.file for l in labels}) > 1 else 'labelled span'}"
    else:
      threshold, precision, recall = 0.5, float("nan"), float("nan")
      how = "not cross-validated (too few labels or no negative label): 0.5"
    counts = {"positive": sum(lab.positive for lab in labels if lab.label == c),
              "negative": sum(not lab.positive for lab in labels if lab.label == c)}
    stats = {"labels": counts, "positive_windows": int(p[:, j].sum()),
             "negative_windows": int(ng[:, j].sum()), "weak_windows": int(weak[:, j].sum()),
             "weak_weight": weak_weight, "threshold_from": how,
             "precision_at_threshold": precision, "recall_at_threshold": recall,
             "trained_at": time.time(), "seconds": time.perf_counter() - t0,
             "archive_windows": int(len(pos))}
    clf = Classifier(c, w[:, j].astype(np.float32), float(b[j]), threshold, archive.identity,
                     stats)
    clf.save(index_path)
    out.append(clf)
  return out


@dataclasses.dataclass
class Proposal:
  """A window to label next (the same fields as a query hit, plus why it was chosen)."""

  file: str
  offset: float
  end: float
  score: float


def similarity(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """Every window's best cosine to the windows `rows` (embeddings are L2-normalised): the
  score of query-by-example search with all of them at once."""
  queries = embeddings[np.asarray(rows, np.int64)].T
  out = np.empty(len(embeddings), np.float32)
  for lo in range(0, len(embeddings), SIMILARITY_BLOCK):
    out[lo:lo + SIMILARITY_BLOCK] = (embeddings[lo:lo + SIMILARITY_BLOCK] @ queries).max(axis=1)
  return out


def _covering(archive: Archive, lab: Label, hit: np.ndarray) -> np.ndarray:
  """Of the rows `hit` a label reaches, those that cover the most of it (to TIE_SECONDS): the
  window itself for a label of one window, every window inside a longer span, every window
  holding a short one whole. Search's queries for the label."""
  start = archive.offsets[hit].astype(np.float64)
  overlap = np.minimum(start + archive.window_seconds, lab.end) - np.maximum(start, lab.start)
  return hit[overlap >= overlap.max() - TIE_SECONDS]


def rank(archive: Archive, clf: Classifier, labels: Sequence[Label], k: int,
         strategy: str = "top") -> list[Proposal]:
  """k windows to label next: the highest scores (top), the scores nearest the threshold
  (margin: what the classifier is least sure of), both alternating (mixed), or the nearest
  neighbours of the class's positive windows until it has HYBRID_POSITIVES positive labels,
  then top (hybrid). A window half or more inside a label of the class is never proposed
  (search's proposals share no audio with one at all), nor two overlapping windows. A proposal's score is the classifier's, whatever the strategy."""
  if strategy not in STRATEGIES:
    raise JaxAudioError(f"--strategy={strategy} is not one of {', '.join(STRATEGIES)}.")
  scores = clf.scores(archive.embeddings)
  taken = np.zeros(len(scores), bool)
  queries = np.zeros(len(scores), bool)
  rows = archive.file_rows()
  mine = [lab for lab in labels if lab.label == clf.label]
  for lab in mine:
    taken[_overlapping(archive, rows, lab, half_counts=True)] = True
    hit = _overlapping(archive, rows, lab)
    if lab.positive and len(hit):
      queries[_covering(archive, lab, hit)] = True
  if strategy == "hybrid":
    searching = sum(lab.positive for lab in mine) < HYBRID_POSITIVES and queries.any()
    strategy = "search" if searching else "top"
  if strategy == "search":   # a window sharing any audio with a label is near it: skip it
    for lab in mine:
      lo, hi = rows.get(lab.file, (0, 0))
      start = archive.offsets[lo:hi]
      taken[lo:hi] |= (start < lab.end) & (start + archive.window_seconds > lab.start)
    orders = {"search": np.argsort(-similarity(archive.embeddings, np.flatnonzero(queries)),
                                   kind="stable")}
  else:
    orders = {"top": np.argsort(-scores, kind="stable"),
              "margin": np.argsort(np.abs(scores - clf.threshold), kind="stable")}
  if strategy == "mixed":
    streams = [iter(orders["top"]), iter(orders["margin"])]
  else:
    streams = [iter(orders[strategy])]
  chosen: list[int] = []
  by_file: dict[int, list[float]] = {}
  turn = 0
  while len(chosen) < k and streams:
    stream = streams[turn % len(streams)]
    row = next((int(r) for r in stream if not taken[r]), None)
    if row is None:
      streams.remove(stream)
      continue
    taken[row] = True
    f, start = int(archive.file_of_row[row]), float(archive.offsets[row])
    if any(abs(start - s) < archive.window_seconds for s in by_file.get(f, ())):
      continue   # overlaps a window already proposed: the same sound
    by_file.setdefault(f, []).append(start)
    chosen.append(row)
    turn += 1
  return [_proposal(archive, r, scores[r]) for r in chosen]


def _proposal(archive: Archive, row: int, score: float) -> Proposal:
  e = archive.files[int(archive.file_of_row[row])]
  start = float(archive.offsets[row])
  return Proposal(e.path, start, min(start + archive.window_seconds, e.seconds), float(score))


def detect(archive: Archive, clf: Classifier, threshold: float | None = None
           ) -> list[Prediction]:
  """One Prediction per file with an event: its windows' scores and the runs of windows at
  or above the threshold (the classifier's own unless given), merged across hops as predict
  --windows merges them, so predict's writers write them."""
  cut = clf.threshold if threshold is None else float(threshold)
  scores = clf.scores(archive.embeddings)
  out = []
  for e, (lo, hi) in zip(archive.files, archive.file_rows().values()):
    if hi == lo or scores[lo:hi].max() < cut:
      continue
    order = np.argsort(archive.offsets[lo:hi], kind="stable")
    start = archive.offsets[lo:hi][order].astype(np.float64)
    probs = scores[lo:hi][order][:, None]
    events = detect_events(start, probs, [clf.label], np.array([cut]),
                           archive.window_seconds, archive.hop_seconds, e.seconds)
    out.append(Prediction(file=e.path, classes=[clf.label], multi_label=True,
                          probabilities=probs.mean(axis=0), window_start=start,
                          window_end=np.minimum(start + archive.window_seconds, e.seconds),
                          window_probabilities=probs, seconds=e.seconds, events=events))
  return out
