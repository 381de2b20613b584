"""The agile-modelling loop over an index, as the CLI and the HTTP API both run it: label
spans (one by one, or a ranking's results by rank), list and export the labels as a training
set, rank the archive with a learned classifier, and write its detections.

The export is the CSV that `--config.data.source=csv:labels.csv` trains on: one row per
labelled span (`path`, `start`, `end`), its positive classes in `label` and its explicit
negatives in `negatives` (';'-separated; a `negatives` column makes the task multi-label, so
a span that holds none of the classes is an all-negative example), and the recording's
folder and file as `group`, so validation and test are carved by recording.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Sequence

from jaxaudio.runtime.errors import JaxAudioError
from jaxaudio.inference.writers import EventsWriter, RavenWriter
from jaxaudio.search.labels import Label, LabelError, LabelStore, check_class
from jaxaudio.search.learn import Archive, detect, load_classifier, open_archive, rank

EXPORT_COLUMNS = ("path", "start", "end", "label", "negatives", "group")


def _resolve(archive: Archive, file: str) -> str:
  """An indexed path for `file`: the path itself, or its absolute form."""
  known = archive.durations
  if file in known:
    return file
  absolute = os.path.abspath(file)
  if absolute in known:
    return absolute
  raise LabelError(f"{file} is not in the index; label files the index holds (take paths "
                   "from query or rank results).")


def label_span(archive: Archive, db: LabelStore, file: str, start: float, end: float,
               label: str, positive: bool, source: str = "command line") -> list[Label]:
  path = _resolve(archive, file)
  return db.add([Label(path, float(start), float(end), check_class(label), positive,
                       source=source)], archive.durations)


def _ranks(values: Sequence[str], count: int, what: str, rest: set[int] | None = None
           ) -> set[int]:
  if [v.lower() for v in values] == ["all"] or (rest is not None and
                                                [v.lower() for v in values] == ["rest"]):
    return set(range(1, count + 1)) - (rest or set())
  out = set()
  for v in values:
    if not v.strip().isdigit() or not 1 <= int(v) <= count:
      raise LabelError(f"--{what}={v} is not a rank of the ranking's {count} results; give "
                       f"ranks 1-{count}, comma-separated" + (", or all" if rest is None
                                                             else ", or rest") + ".")
    out.add(int(v))
  return out


def label_ranking(archive: Archive, db: LabelStore, ranking_file: str, accept: Sequence[str],
                  reject: Sequence[str], label: str | None) -> list[Label]:
  """Label a ranking's (or a query's) results by rank: `accept` hold the class, `reject` do
  not. The class is the ranking's own unless `label` names one."""
  try:
    with open(ranking_file) as f:
      ranking = json.load(f)
    results = ranking["results"]
    spans = [(r["file"], float(r["offset"]), float(r["end"])) for r in results]
  except (OSError, ValueError, KeyError, TypeError) as err:
    raise LabelError(f"{ranking_file} is not a ranking written by rank --json or query --json "
                     f"({type(err).__name__}: {err}); pass such a file as --from.") from err
  name = label or ranking.get("label")
  if not name:
    raise LabelError(f"{ranking_file} names no class (a query's results); pass --label=CLASS.")
  yes = _ranks(accept, len(spans), "accept")
  no = _ranks(reject, len(spans), "reject", rest=yes)
  if yes & no:
    raise LabelError(f"ranks {sorted(yes & no)} are both accepted and rejected; name each "
                     "once.")
  if not yes and not no:
    raise LabelError("label --from needs --accept=RANKS and/or --reject=RANKS (1-based).")
  source = f"rank {name} {ranking.get('strategy', 'query')}"
  todo = [Label(_resolve(archive, spans[i - 1][0]), spans[i - 1][1], spans[i - 1][2],
                check_class(name), i in yes, source=source) for i in sorted(yes | no)]
  return db.add(todo, archive.durations)


def export_rows(labels: Sequence[Label]) -> list[dict[str, str]]:
  """One CSV row per labelled span: positives and explicit negatives of every class."""
  spans: dict[tuple[str, float, float], dict[str, set[str]]] = {}
  for lab in labels:
    entry = spans.setdefault((lab.file, lab.start, lab.end), {"pos": set(), "neg": set()})
    entry["pos" if lab.positive else "neg"].add(lab.label)
  rows = []
  for (path, start, end), entry in sorted(spans.items()):
    rows.append({"path": path, "start": f"{start:.3f}", "end": f"{end:.3f}",
                 "label": ";".join(sorted(entry["pos"])),
                 "negatives": ";".join(sorted(entry["neg"] - entry["pos"])),
                 "group": path})
  return rows


def list_labels(index_path: str, db: LabelStore, export: str | None
                ) -> tuple[dict[str, dict[str, int]], str | None]:
  """({class: counts}, the CSV written or None)."""
  counts, labels = db.counts(), db.all() if export else []
  if not export:
    return counts, None
  if not labels:
    raise LabelError(f"{index_path} has no labels to export; label some first.")
  tmp = f"{export}.tmp-{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=EXPORT_COLUMNS)
    w.writeheader()
    w.writerows(export_rows(labels))
  os.replace(tmp, export)
  return counts, export


def ranking(index_path: str, db: LabelStore, label: str, k: int, strategy: str,
            archive: Archive | None = None) -> dict[str, Any]:
  """{"label", "strategy", "threshold", "results": [{file, offset, end, score}]}: the windows
  to label next (the objects query --json gives)."""
  archive = archive or open_archive(index_path)
  clf = load_classifier(index_path, label, archive)
  props = rank(archive, clf, db.all([label]), k, strategy)
  return {"label": label, "strategy": strategy, "threshold": clf.threshold,
          "results": [dataclasses.asdict(p) for p in props]}


def write_detections(index_path: str, label: str, threshold: float | None, out: str,
                     fmt: str, archive: Archive | None = None) -> tuple[int, int]:
  """Every indexed window scored, runs above the threshold merged into events, written as
  predict --windows' events CSV or a Raven table; returns (events, files with events)."""
  if threshold is not None and not 0.0 <= threshold <= 1.0:
    raise JaxAudioError(f"--threshold={threshold} is not a probability in [0, 1].")
  archive = archive or open_archive(index_path)
  clf = load_classifier(index_path, label, archive)
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise JaxAudioError(f"{folder}: no such folder for --out; create it first.")
  found = detect(archive, clf, threshold)
  writer = RavenWriter(out, archive.fmax) if fmt == "raven" else EventsWriter(out)
  try:
    for pred in found:
      writer.add(pred)
  finally:
    writer.close()
  return sum(len(p.events) for p in found), len(found)
