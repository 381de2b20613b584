"""The agile-modelling half of the search API: labels, learn, rank, detect, and a sample of
the collection to start from (jaxaudio/search/agile.py does the work; the CLI runs the same).

  GET  /api/collection?sample=N&seed=S  files, windows, label counts, N random windows
  GET  /api/labels[?label=C][&limit=N]  the labels (ids and names, not paths) and counts
  POST /api/labels     JSON {id, start, end, label, positive[, source]}  -> the stored label
  DELETE /api/labels?id=&start=&end=&label=    take a verdict back
  POST /api/learn      JSON {labels: [C, ...]}  -> per class: threshold, precision, recall,
                       counts, and the score histogram of the archive
  GET  /api/rank?label=C&k=K&strategy=top|margin|mixed|hybrid  -> {label, strategy, threshold,
                       results: [{id, name, offset, end, score, audio_url}]}
  GET  /api/detect?label=C[&threshold=T][&format=csv|raven]  -> the events file

Files are named by the server's ids; labels are stored by path (labels.py), so they outlive
any generation of the index. The token and Host checks of the app guard these routes too.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from jaxaudio.search import agile, learn
from jaxaudio.search.http_guards import ApiError
from jaxaudio.search.labels import Label, LabelError, LabelStore
from jaxaudio.search.service import Service, file_id

HISTOGRAM_BINS = 20


class LabelIn(BaseModel):
  """One verdict on a span of an indexed file."""

  id: str = Field(description="the indexed file's id (from /api/query, /api/rank, ...)")
  start: float = Field(description="seconds into the file")
  end: float = Field(description="seconds into the file, after start")
  label: str = Field(description="the class")
  positive: bool = Field(True, description="true: the span holds the class; false: it does not")
  source: str = Field("page", description="where the verdict came from")


class LearnIn(BaseModel):
  labels: list[str] = Field(description="the classes to train, one-vs-rest")


def router(service: Service, labels_at: str | None = None, show_paths: bool = False
           ) -> APIRouter:
  """The routes over `service`, labels in the database at `labels_at` (default the index's
  labels.sqlite)."""
  api = APIRouter()
  db = LabelStore(labels_at or service.path)   # one engine (a connection pool) for all
  def archive() -> tuple[Any, learn.Archive]:
    loaded = service.current()
    return loaded, learn.archive_of(loaded.exact.manifest, loaded.exact.rows)

  def path_of(loaded, fid: str) -> str:
    entry = loaded.files.get(fid)
    if entry is None:
      raise ApiError(404, f"no indexed file has id {fid!r}; take ids from /api/query results.")
    return entry.path

  def window(path: str, start: float, end: float, score: float | None = None
             ) -> dict[str, Any]:
    fid = file_id(path)
    out = {"id": fid, "name": os.path.basename(path), "offset": start, "end": end,
           "audio_url": f"/api/audio/{fid}", **({"file": path} if show_paths else {})}
    if score is not None:
      out["score"] = score
    return out

  def labelled(lab: Label) -> dict[str, Any]:
    out = window(lab.file, lab.start, lab.end)
    out.update(label=lab.label, positive=lab.positive, who=lab.who, created=lab.created,
               source=lab.source)
    return out

  def guarded(fn, *args):
    try:
      return fn(*args)
    except LabelError as err:
      raise ApiError(400, _private(str(err), service.current())) from err
    except learn.ClassifierError as err:
      raise ApiError(409, _private(str(err), service.current())) from err

  @api.get("/api/collection")
  def collection(sample: int = Query(24, ge=0, le=500), seed: int = Query(0, ge=0)):
    """The collection to start from: counts, and `sample` random windows to listen to."""
    loaded, arch = archive()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(arch.offsets), min(sample, len(arch.offsets)),
                              replace=False)) if len(arch.offsets) else []
    counts = db.counts()
    windows = []
    for r in rows:
      e = arch.files[int(arch.file_of_row[r])]
      s = float(arch.offsets[r])
      windows.append(window(e.path, s, min(s + arch.window_seconds, e.seconds)))
    return {"files": len(loaded.files), "windows": int(len(arch.offsets)),
            "hours": sum(e.seconds for e in arch.files) / 3600.0,
            "window_seconds": arch.window_seconds, "label_counts": counts, "sample": windows}

  @api.get("/api/labels")
  def list_labels(label: str | None = None, limit: int = Query(10_000, ge=0)):
    """The labels (of one class; the first `limit`, 0 for the counts alone) and the counts
    per class."""
    labels = db.all([label] if label else None) if limit else []
    counts = db.counts()
    return {"counts": counts, "labels": [labelled(lab) for lab in labels[:limit]]}

  @api.post("/api/labels")
  def add_label(body: LabelIn):
    """Store one verdict ("yes, CLASS" / "not CLASS") on a span of an indexed file."""
    loaded, arch = archive()
    path = path_of(loaded, body.id)
    (lab,) = guarded(agile.label_span, arch, db, path, body.start, body.end, body.label,
                     body.positive, body.source)
    return labelled(lab)

  @api.delete("/api/labels")
  def remove_label(id: str, start: float, end: float, label: str):  # pylint: disable=redefined-builtin
    """Take one verdict back."""
    path = path_of(service.current(), id)
    return {"removed": db.remove(path, start, end, label)}

  @api.post("/api/learn")
  def learn_classes(body: LearnIn):
    """Train the classes' classifiers on the labels; their thresholds and the archive's
    score histogram."""
    _, arch = archive()
    if not body.labels:
      raise ApiError(400, "learn needs at least one class in `labels`.")
    clfs = guarded(learn.learn, service.path, body.labels, db.all(), learn.WEAK_WEIGHT,
                   learn.FOLDS, 0, arch)
    out = {}
    for clf in clfs:
      scores = clf.scores(arch.embeddings)
      hist, edges = np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
      out[clf.label] = {"threshold": clf.threshold, **_finite(clf.stats),
                        "above_threshold": int((scores >= clf.threshold).sum()),
                        "histogram": {"counts": hist.tolist(), "edges": edges.tolist()}}
    return {"classes": out}

  @api.get("/api/rank")
  def rank(label: str, k: int = Query(10, ge=1, le=1000),
           strategy: str = Query("top", pattern="^(top|margin|mixed|hybrid)$")):
    """Windows to label next: the classifier's best (top), its least certain (margin), or
    both (mixed), never labelled ones."""
    _, arch = archive()
    ranking = guarded(agile.ranking, service.path, db, label, k, strategy, arch)
    ranking["results"] = [window(r["file"], r["offset"], r["end"], r["score"])
                          for r in ranking["results"]]
    return ranking

  @api.get("/api/detect")
  def detect(label: str, threshold: float | None = Query(None, ge=0.0, le=1.0),
             format: str = Query("csv", pattern="^(csv|raven)$")):  # pylint: disable=redefined-builtin
    """Every window scored; runs at or above the threshold as events, as a file."""
    _, arch = archive()
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, f"{label}.{'txt' if format == 'raven' else 'csv'}")
      guarded(agile.write_detections, service.path, label, threshold, out, format, arch)
      with open(out) as f:
        body = f.read()
    if not show_paths:   # the events name files by name, as every response does
      for e in arch.files:
        body = body.replace(e.path, os.path.basename(e.path))
    kind = "text/tab-separated-values" if format == "raven" else "text/csv"
    return Response(body, media_type=kind, headers={
        "Content-Disposition": f'attachment; filename="{os.path.basename(out)}"'})

  return api


def _finite(stats: dict[str, Any]) -> dict[str, Any]:
  """JSON has no NaN: unknown precision/recall become null."""
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
          for k, v in stats.items()}


def _private(message: str, loaded) -> str:
  """A sentence with the server's paths replaced by file names."""
  for e in loaded.files.values():
    message = message.replace(e.path, os.path.basename(e.path))
  return message
