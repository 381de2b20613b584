"""Carving splits: group-disjoint train/validation/test, stratified when there are no groups,
and the folds of cross-validation."""

from __future__ import annotations
import dataclasses
import warnings
from collections import Counter
import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from jaxaudio.runtime.errors import DataError

from jaxaudio.data.listing import SPLITS, Clip, Listing, clip_label


def _group_folds(clips: list[Clip], n_splits: int, seed: int) -> np.ndarray:
  """Fold index per clip: groups never straddle folds, label shares kept close
  (StratifiedGroupKFold; its warning about classes smaller than n_splits is expected here)."""
  fold = np.zeros(len(clips), int)
  labels = [clip_label(c) for c in clips]
  # StratifiedGroupKFold refuses when every class is smaller than n_splits; whole groups
  # then go round without stratification (GroupKFold).
  stratify = max(Counter(labels).values()) >= n_splits
  splitter = (StratifiedGroupKFold if stratify else GroupKFold)(
      n_splits=n_splits, shuffle=True, random_state=seed)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    for k, (_, idx) in enumerate(splitter.split(np.zeros(len(clips)), labels,
                                                [c.group for c in clips])):
      fold[idx] = k
  return fold


def _group_split(clips: list[Clip], fractions: dict[str, float], seed: int) -> list[Clip]:
  """Carve each split of `fractions` from train as whole groups (about that share of the
  clips, stratified by label), so no group is in two splits. A class whose groups would all
  leave train is tried again with other seeds, then refused."""
  rest, out, total = sorted(clips, key=lambda c: c.key), [], len(clips)
  for split, frac in fractions.items():
    groups = sorted({c.group for c in rest})
    n_splits = min(len(groups), max(2, int(round(len(rest) / max(frac * total, 1e-9)))))
    if n_splits < 2:
      raise DataError(f"data.group gives train a single group ({groups[0]!r}), so no "
                      f"group-disjoint {split} split can be carved; add recordings of other "
                      "groups, give the split as files, or set data.group=''.")
    labels = {clip_label(c) for c in rest}
    for attempt in range(20):
      fold = _group_folds(rest, n_splits, seed + 1000 * attempt)
      kept = {clip_label(c) for c, f in zip(rest, fold) if f != 0}
      if kept == labels:
        break
    else:
      lost = sorted(labels - kept)
      owners = sorted({c.group for c in rest if clip_label(c) == lost[0]})
      raise DataError(f"class {lost[0]!r} has its train clips in too few groups ({owners[:5]}) "
                      f"to carve a group-disjoint {split} split and keep it in train; add "
                      "recordings of that class from other groups, or give the split as files.")
    out += [dataclasses.replace(c, split=split) for c, f in zip(rest, fold) if f == 0]
    rest = [c for c, f in zip(rest, fold) if f != 0]
  return out + rest


def _stratified_split(clips: list[Clip], fractions: dict[str, float], seed: int) -> list[Clip]:
  """Move `fractions[split]` of each label's train clips into that split (seeded); whole
  groups at a time when the clips have groups."""
  if any(c.group for c in clips):
    return _group_split(clips, fractions, seed)
  by_label: dict[str, list[Clip]] = {}
  for c in sorted(clips, key=lambda c: c.key):
    by_label.setdefault(clip_label(c), []).append(c)
  out = []
  rng = np.random.default_rng(seed)
  for label in sorted(by_label):
    group = by_label[label]
    order = rng.permutation(len(group))
    start = 0
    for split, frac in fractions.items():
      n = int(round(frac * len(group)))
      if frac > 0 and n == 0 and len(group) >= 3:
        n = 1
      for i in order[start:start + n]:
        out.append(dataclasses.replace(group[i], split=split))
      start += n
    out += [group[i] for i in order[start:]]
  return out


def fill_missing_splits(clips: list[Clip], cfg) -> list[Clip]:
  present = {c.split for c in clips}
  wanted = {"validation": float(cfg.val_fraction), "test": float(cfg.test_fraction)}
  fractions = {s: f for s, f in wanted.items() if s not in present and f > 0}
  if not fractions:
    return clips
  train = [c for c in clips if c.split == "train"]
  rest = [c for c in clips if c.split != "train"]
  return rest + _stratified_split(train, fractions, int(cfg.split_seed))


def clip_folds(clips: list[Clip], folds: int, cfg, source: str) -> dict[str, int]:
  """Fold (1..folds) of each clip key.

  Folds are a CSV's `fold` column when every clip has one (ESC-50; keeps its recording
  groups apart), else every clip is dealt round-robin into folds per label after a seeded
  shuffle (stratified K-fold). Grouped data (several clips of one speaker or recording) needs
  data.group (whole groups per fold, StratifiedGroupKFold) or its folds in a CSV, or the
  folds leak."""
  if all(c.fold for c in clips):
    present = sorted({c.fold for c in clips})
    if len(present) != folds:
      raise DataError(f"{source} defines {len(present)} folds {present} in its fold "
                      f"column, not {folds}; pass --folds={len(present)}.")
    return {c.key: present.index(c.fold) + 1 for c in clips}
  if any(c.group for c in clips):
    ordered = sorted(clips, key=lambda c: c.key)
    groups = len({c.group for c in ordered})
    if groups < folds:
      raise DataError(f"{source} has {groups} groups, fewer than the {folds} folds "
                      "asked for; use fewer folds.")
    return {c.key: int(f) + 1 for c, f in zip(ordered, _group_folds(ordered, folds,
                                                                    int(cfg.split_seed)))}
  of = {}
  rng = np.random.default_rng(int(cfg.split_seed))
  by_label: dict[str, list[Clip]] = {}
  for c in sorted(clips, key=lambda c: c.key):
    by_label.setdefault(clip_label(c), []).append(c)
  for label in sorted(by_label):
    group = by_label[label]
    start = int(rng.integers(folds))    # so small classes do not all start in fold 1
    for rank, i in enumerate(rng.permutation(len(group))):
      of[group[i].key] = (start + rank) % folds + 1
  return of


def cross_validation_splits(listing: Listing, folds: int, fold: int, cfg) -> list[Clip]:
  """Splits for fold `fold` of `folds` (clip_folds): that fold is test, validation is carved
  (stratified, data.val_fraction) from the other folds, the rest is train."""
  if not 1 <= fold <= folds or folds < 2:
    raise DataError(f"cross-validation fold {fold} of {folds} is out of range; use 2 or more "
                    "folds and a fold from 1 to their number.")
  clips = listing.clips
  of = clip_folds(clips, folds, cfg, listing.source)
  test = [dataclasses.replace(c, split="test") for c in clips if of[c.key] == fold]
  rest = [dataclasses.replace(c, split="train") for c in clips if of[c.key] != fold]
  return sorted(test + _stratified_split(rest, {"validation": float(cfg.val_fraction)},
                                         int(cfg.split_seed)),
                key=lambda c: (SPLITS.index(c.split), c.key))
