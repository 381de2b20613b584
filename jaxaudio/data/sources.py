"""Sources of labelled audio -> a validated listing of clips with labels and splits.

  folder:PATH   PATH/<class>/* or PATH/{train,validation,test}/<class>/*
  csv:PATH      columns path,label (';' separates labels -> multi-label), optional split or
                fold; ESC-50's meta/esc50.csv (filename, category, fold) works as it is
  tfds:NAME     a TFDS catalog dataset with an audio feature and a label
  demo          the built-in synthesised dataset (jaxaudio.data.demo)

Missing splits are carved from train by a seeded split stratified by label; with groups
(`data.group`: a speaker, session, room or instrument per clip, from a CSV column or a regular
expression over paths) every carved split is group-disjoint, so validation measures new
groups as the test does (scikit-learn's StratifiedGroupKFold). Problems that
make training meaningless (an empty class, a split with no clips, a label in validation or
test that train never shows) are DataErrors raised here, before any audio is decoded.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import re
from collections import Counter

import numpy as np

from jaxaudio.audio.io import AUDIO_EXTENSIONS
from jaxaudio.data import demo
from jaxaudio.runtime.errors import DataError
from jaxaudio.runtime.cache import cache_dir
from jaxaudio.data.listing import SPLIT_NAMES, SPLITS, Clip, Listing
from jaxaudio.data.splits import cross_validation_splits, fill_missing_splits

log = logging.getLogger("jaxaudio")


def _list_folder(root: str, cfg) -> Listing:
  if not os.path.isdir(root):
    raise DataError(f"{root}: no such folder; set data.source=folder:PATH to a folder of "
                    "<class>/ subfolders.")
  top = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
               and not d.startswith("."))
  split_dirs = [d for d in top if d.lower() in SPLIT_NAMES]
  layout = ([(os.path.join(root, d), SPLIT_NAMES[d.lower()]) for d in split_dirs]
            if split_dirs else [(root, "train")])
  clips, ignored, empty = [], [], []
  for base, split in layout:
    for label in sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))
                        and not d.startswith(".")):
      files = []
      for dirpath, dirs, names in os.walk(os.path.join(base, label)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(dirpath, n) for n in sorted(names) if not n.startswith(".")]
      for f in files:
        if f.lower().endswith(AUDIO_EXTENSIONS):
          clips.append(Clip(key=os.path.relpath(f, root), labels=(label,), split=split, path=f))
        else:
          ignored.append((f, "not an audio file extension"))
      if not any(f.lower().endswith(AUDIO_EXTENSIONS) for f in files):
        empty.append(os.path.join(base, label))
  if empty:
    raise DataError(f"class folder {empty[0]} holds no audio files"
                    f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; add clips "
                    "or remove the folder.")
  clips = _with_groups(clips, cfg, f"folder:{root}")
  return _finish(f"folder:{root}", fill_missing_splits(clips, cfg), ignored)


def _csv_base_dir(csv_path: str, rows: list[dict[str, str]], path_col: str, cfg) -> str:
  here = os.path.dirname(os.path.abspath(csv_path))
  candidates = ([cfg.csv_audio_dir] if cfg.csv_audio_dir else []) + [
      here, os.path.join(here, os.pardir, "audio")]  # ESC-50 keeps audio/ beside meta/
  for base in candidates:
    if any(os.path.isfile(os.path.join(base, r[path_col])) for r in rows[:50]):
      return os.path.normpath(base)
  return os.path.normpath(candidates[0])


def _group_rule(cfg) -> tuple[str, str]:
  """data.group as (kind, argument): ("", "") none, ("column", NAME), ("regex", PATTERN)."""
  rule = str(cfg.get("group", "") or "")
  kind, _, arg = rule.partition(":")
  if not rule:
    return "", ""
  if kind not in ("column", "regex") or not arg:
    raise DataError(f"data.group={rule!r} is not column:NAME or regex:PATTERN; e.g. "
                    "regex:'^(spk\\d+)_' for a speaker id at the start of file names.")
  return kind, arg


def _csv_group_column(header: list[str], cfg) -> str:
  """The CSV column holding groups: data.group=column:NAME, else a column named `group`;
  "" for none."""
  kind, arg = _group_rule(cfg)
  column = arg if kind == "column" else ("group" if not kind and "group" in header else "")
  if column and column not in header:
    raise DataError(f"data.group names column {column!r}, which the CSV lacks (columns "
                    f"{header}); fix data.group or the CSV.")
  return column


def _with_groups(clips: list[Clip], cfg, source: str) -> list[Clip]:
  """Clips with their group from data.group=regex:PATTERN matched against the clip's path
  relative to the source (the first capture group that matched, else the whole match)."""
  kind, arg = _group_rule(cfg)
  if kind == "column" and source.startswith("folder:"):
    raise DataError(f"data.group={kind}:{arg} needs a CSV source; for a folder use "
                    "regex:PATTERN over the file paths.")
  if kind != "regex":
    return clips
  try:
    pattern = re.compile(arg)
  except re.error as err:
    raise DataError(f"data.group regex {arg!r} is invalid ({err}); fix the pattern.") from err
  out = []
  for c in clips:
    m = pattern.search(c.key)
    if m is None:
      raise DataError(f"data.group regex {arg!r} does not match {c.key!r} ({source}); every "
                      "clip needs a group: fix the pattern or the file name.")
    name = next((g for g in m.groups() if g is not None), m.group(0))
    out.append(dataclasses.replace(c, group=name))
  return out


def _list_csv(path: str, cfg) -> Listing:
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such CSV file; set data.source=csv:PATH.")
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = [h.strip() for h in (reader.fieldnames or [])]
    rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
  path_col = next((c for c in ("path", "filename", "file") if c in header), None)
  label_col = next((c for c in ("label", "labels", "category") if c in header), None)
  if not path_col or not label_col:
    raise DataError(f"{path}: needs a path column (path or filename) and a label column (label "
                    f"or category); found columns {header}.")
  if not rows:
    raise DataError(f"{path}: the CSV has a header but no rows; add one row per clip.")
  base = _csv_base_dir(path, rows, path_col, cfg)
  group_col = _csv_group_column(header, cfg)
  val_folds = {int(x) for x in cfg.validation_folds}
  test_folds = {int(x) for x in cfg.test_folds}
  clips, ignored = [], []
  # A `negatives` column (search labels --export) makes the task multi-label: a row may hold
  # no positive class at all, and the classes it names as absent are classes all the same.
  with_negatives = "negatives" in header
  negatives = set()
  segments = "start" in header and "end" in header
  for line, r in enumerate(rows, start=2):
    labels = tuple(sorted({l.strip() for l in r[label_col].split(";") if l.strip()}))
    if with_negatives:
      negatives |= {l.strip() for l in r.get("negatives", "").split(";") if l.strip()}
    if not labels and not (with_negatives and r.get("negatives")):
      ignored.append((f"{path}:{line}", "no label"))
      continue
    start, end = _segment(path, line, r) if segments else (0.0, 0.0)
    if "split" in header and r.get("split"):
      split = SPLIT_NAMES.get(r["split"].lower())
      if split is None:
        raise DataError(f"{path}:{line}: split '{r['split']}' is not one of train, validation, "
                        "test; fix the CSV.")
    elif "fold" in header and r.get("fold"):
      fold = int(r["fold"])
      split = "test" if fold in test_folds else "validation" if fold in val_folds else "train"
    else:
      split = "train"
    audio = os.path.join(base, r[path_col])
    fold = int(r["fold"]) if "fold" in header and r.get("fold") else 0
    if group_col and not r.get(group_col):
      raise DataError(f"{path}:{line}: the {group_col!r} column is empty; give every clip its "
                      "group.")
    key = r[path_col] if not end else f"{r[path_col]}@{start:.3f}-{end:.3f}"
    clips.append(Clip(key=key, labels=labels, split=split, path=audio, fold=fold,
                      group=r[group_col] if group_col else "", start=start, end=end))
  if "fold" in header and "split" not in header:
    folds = {int(r["fold"]) for r in rows if r.get("fold")}
    missing = sorted((val_folds | test_folds) - folds)
    if missing:
      raise DataError(f"{path}: folds {missing} chosen in data.validation_folds/test_folds do "
                      f"not occur (folds present: {sorted(folds)}); pick existing folds.")
    return _finish(f"csv:{path}", clips, ignored, with_negatives, negatives)
  clips = _with_groups(clips, cfg, f"csv:{path}")
  return _finish(f"csv:{path}", fill_missing_splits(clips, cfg), ignored, with_negatives,
                 negatives)


def _segment(path: str, line: int, r: dict[str, str]) -> tuple[float, float]:
  """(start, end) of a CSV row's segment; empty cells mean the whole file."""
  if not r.get("start") and not r.get("end"):
    return 0.0, 0.0
  try:
    start, end = float(r.get("start") or 0.0), float(r["end"])
  except (KeyError, ValueError) as err:
    raise DataError(f"{path}:{line}: start={r.get('start')!r} end={r.get('end')!r} are not "
                    "seconds; give numbers, or leave both empty for the whole file.") from err
  if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start < end):
    raise DataError(f"{path}:{line}: start={start:g} end={end:g} is not a segment; give "
                    "0 <= start < end in seconds.")
  return start, end


def _list_tfds(name: str, cfg) -> Listing:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  t = cfg.tfds
  data_dir = t.data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as err:  # tfds raises DatasetNotFoundError and friends
    raise DataError(f"tfds:{name}: {err}; check the dataset name (tfds.list_builders()).") from err
  features = builder.info.features
  for key, what in ((t.audio_key, "audio"), (t.label_key, "label")):
    if key not in features:
      raise DataError(f"tfds:{name} has no feature '{key}' for the {what} (features: "
                      f"{sorted(features.keys())}); set data.tfds.{what}_key.")
  names = getattr(features[t.label_key], "names", None)
  sample_rate = getattr(features[t.audio_key], "sample_rate", None) or int(t.sample_rate or 0)
  if not sample_rate:
    raise DataError(f"tfds:{name}: the audio feature does not state its sample rate; set "
                    "data.tfds.sample_rate.")
  clips = []
  splits = {}
  for split in SPLITS:
    spec = t.splits.get(split, "")
    if not spec:
      continue
    splits[split] = spec
    try:
      ds = tfds.load(name, split=spec, data_dir=data_dir, download=bool(t.download),
                     decoders={t.audio_key: tfds.decode.SkipDecoding()})
    except Exception as err:  # pylint: disable=broad-except
      raise DataError(f"tfds:{name}: cannot load split '{spec}' for {split} ({err}); set "
                      f"data.tfds.splits.{split} to an existing split or slice.") from err
    for i, ex in enumerate(tfds.as_numpy(ds.map(lambda e: {"label": e[t.label_key]}))):
      lab = ex["label"]
      values = np.atleast_1d(lab)
      if values.dtype.kind in "biu" and values.size > 1:   # multi-hot
        labels = tuple(names[j] if names else str(j) for j in np.flatnonzero(values))
      else:
        labels = tuple(names[int(v)] if names else (v.decode() if isinstance(v, bytes) else str(v))
                       for v in values)
      clips.append(Clip(key=f"tfds:{name}/{spec}/{i}", labels=labels, split=split, tfds_index=i))
  listing = _finish(f"tfds:{name}", clips, [])
  listing.tfds = {"name": name, "data_dir": data_dir, "splits": splits, "audio_key": t.audio_key,
                  "label_key": t.label_key, "sample_rate": int(sample_rate),
                  "version": str(builder.info.version)}
  return listing


def _finish(source: str, clips: list[Clip], ignored: list[tuple[str, str]],
            multi_label: bool = False, more_classes: set[str] | frozenset = frozenset()
            ) -> Listing:
  """The sorted listing; `multi_label` forces a multi-label task (explicit negatives) and
  `more_classes` adds classes that only negatives name."""
  clips = sorted(clips, key=lambda c: (SPLITS.index(c.split), c.key))
  classes = tuple(sorted({l for c in clips for l in c.labels} | set(more_classes)))
  multi = multi_label or any(len(c.labels) > 1 for c in clips)
  return Listing(source=source, clips=clips, classes=classes, multi_label=multi, ignored=ignored)


def validate(listing: Listing) -> None:
  """The checks that must pass before any decoding starts; each failure is one DataError."""
  for split in SPLITS:
    if not listing.split(split):
      raise DataError(f"{listing.source}: the {split} split has no clips; add files for it or "
                      "set data.val_fraction / data.test_fraction so it is carved from train.")
  train = Counter(l for c in listing.split("train") for l in c.labels)
  if len(train) < (1 if listing.multi_label else 2):
    raise DataError(f"{listing.source}: train has {len(train)} class(es); a classifier needs at "
                    "least two (or one, with explicit negatives: a multi-label CSV with a "
                    "`negatives` column).")
  for split in ("validation", "test"):
    unseen = sorted({l for c in listing.split(split) for l in c.labels} - set(train))
    if unseen:
      raise DataError(f"{listing.source}: label(s) {unseen[:5]} appear in {split} but never in "
                      "train; add training clips for them or remove those clips.")
  for label, splits in unmeasured_classes(listing).items():
    log.warning("warning: class %r has %d training clip(s) and none in %s, so its scores are "
                "never measured there (validation and test average over the other classes); "
                "give it at least 3 clips, or files of its own in those splits.",
                label, train[label], " or ".join(splits))


def unmeasured_classes(listing: Listing) -> dict[str, list[str]]:
  """{class: the splits of validation and test that hold none of its clips}: a class with
  one or two clips stays whole in train when splits are carved (jaxaudio cannot split it)."""
  held = {s: {l for c in listing.split(s) for l in c.labels} for s in ("validation", "test")}
  out: dict[str, list[str]] = {}
  for label in listing.classes:
    missing = [s for s in ("validation", "test") if label not in held[s]]
    if missing:
      out[label] = missing
  return out


def list_source(cfg) -> Listing:
  """cfg: the config's `data` section. Returns a validated Listing."""
  source = str(cfg.source)
  kind, _, arg = source.partition(":")
  if kind in ("tfds", "demo") and _group_rule(cfg)[0]:
    raise DataError(f"data.group is for folder and csv sources, not {kind}; set data.group=''.")
  if kind == "demo":
    root = demo.demo_dir(os.path.join(cache_dir(), "demo"), int(cfg.demo.seed),
                         dict(cfg.demo.clips_per_class), float(cfg.demo.seconds),
                         int(cfg.demo.sample_rate))
    listing = _list_folder(root, cfg)
    listing.source = "demo"
  elif kind == "folder" and arg:
    listing = _list_folder(os.path.abspath(os.path.expanduser(arg)), cfg)
  elif kind == "csv" and arg:
    listing = _list_csv(os.path.abspath(os.path.expanduser(arg)), cfg)
  elif kind == "tfds" and arg:
    listing = _list_tfds(arg, cfg)
  else:
    raise DataError(f"data.source='{source}' is not one of folder:PATH, csv:PATH, tfds:NAME or "
                    "demo; fix the config.")
  if int(cfg.cv_folds):
    listing.clips = cross_validation_splits(listing, int(cfg.cv_folds), int(cfg.cv_fold), cfg)
  validate(listing)
  return listing


