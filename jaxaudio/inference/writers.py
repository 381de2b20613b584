"""Prediction files: per-file CSV, window and event CSVs, JSON, and Raven selection tables.

CSV (one row per file): `file`, `label` (the top label), then one column per class with its
clip probability; then, when asked for, `labels` (every class at or above its threshold,
";"-separated) and `top_k` (the k most probable, ";"-separated). With windows: PREFIX.windows.csv (`file`, `start`, `end`, `label`, one
column per class) and PREFIX.events.csv (`file`, `start`, `end`, `label`, `peak`).
Raven: the tab-separated selection table that Raven Pro and similar tools open, one
selection per event; for several files, `Begin Time (s)` counts along the files one after
another (Raven's file-sequence time) and `Begin Path` / `File Offset (s)` say where.

Writers stream: each file's rows are written and flushed as its prediction arrives, so a
crash or a kill loses nothing already predicted. JSON is one document, written at the end.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, TextIO

from jaxaudio.inference.predictor import Prediction

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                 "Low Freq (Hz)", "High Freq (Hz)", "Begin Path", "File Offset (s)", "Label",
                 "Score")


def _sibling(out: str, suffix: str) -> str:
  stem, _ = os.path.splitext(out)
  return f"{stem}.{suffix}.csv"


class CsvWriter:
  """PREDICTIONS.csv, and with `windows` its .windows.csv and .events.csv siblings."""

  def __init__(self, out: str, classes: list[str], windows: bool, top_k: int = 0,
               thresholds=None):
    self.classes, self.windows, self.top_k, self.thresholds = classes, windows, top_k, thresholds
    self._files: list[TextIO] = []
    self.paths = [out] + ([_sibling(out, "windows"), _sibling(out, "events")] if windows else [])
    self._rows = self._open(out, ["file", "label"] + classes
                            + ["labels"] * (thresholds is not None) + ["top_k"] * (top_k > 1))
    if windows:
      self._windows = self._open(self.paths[1], ["file", "start", "end", "label"] + classes)
      self._events = self._open(self.paths[2], EVENT_COLUMNS)

  def _open(self, path: str, header: list[str]):
    f = open(path, "w", newline="")  # pylint: disable=consider-using-with  (closed in close)
    self._files.append(f)
    w = csv.writer(f)
    w.writerow(header)
    return w

  def add(self, pred: Prediction) -> None:
    row = [pred.file, pred.label] + [f"{p:.6f}" for p in pred.probabilities]
    if self.thresholds is not None:
      row.append(";".join(pred.labels_above(self.thresholds)))
    if self.top_k > 1:
      row.append(";".join(c for c, _ in pred.top_k(self.top_k)))
    self._rows.writerow(row)
    if self.windows:
      for s, e, row in zip(pred.window_start, pred.window_end, pred.window_probabilities):
        self._windows.writerow([pred.file, f"{s:.3f}", f"{e:.3f}",
                                self.classes[int(row.argmax())]] + [f"{p:.6f}" for p in row])
      for ev in pred.events:
        self._events.writerow(event_row(pred.file, ev))
    for f in self._files:
      f.flush()

  def close(self) -> None:
    for f in self._files:
      f.close()


EVENT_COLUMNS = ["file", "start", "end", "label", "peak"]


def event_row(file: str, ev) -> list[str]:
  return [file, f"{ev.start:.3f}", f"{ev.end:.3f}", ev.label, f"{ev.peak:.6f}"]


class EventsWriter:
  """An events CSV alone (the columns of predict's PREFIX.events.csv): search detect's."""

  def __init__(self, out: str):
    self.paths = [out]
    self._f = open(out, "w", newline="")  # pylint: disable=consider-using-with
    self._w = csv.writer(self._f)
    self._w.writerow(EVENT_COLUMNS)

  def add(self, pred: Prediction) -> None:
    self.add_events(pred.file, pred.events)

  def add_events(self, file: str, events) -> None:
    """Rows for `events` of `file`, flushed at once (a live stream appends as they end)."""
    for ev in events:
      self._w.writerow(event_row(file, ev))
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class RavenWriter:
  """A Raven selection table of the events of every file (tab-separated text)."""

  def __init__(self, out: str, high_freq: float):
    self.paths = [out]
    self.high_freq = high_freq
    self._f = open(out, "w", newline="")  # pylint: disable=consider-using-with
    self._w = csv.writer(self._f, delimiter="\t", lineterminator="\n")
    self._w.writerow(RAVEN_COLUMNS)
    self._selection = 0
    self._elapsed = 0.0   # duration of the files before this one

  def add(self, pred: Prediction) -> None:
    for ev in pred.events:
      self._selection += 1
      self._w.writerow([self._selection, "Spectrogram 1", 1, f"{self._elapsed + ev.start:.3f}",
                        f"{self._elapsed + ev.end:.3f}", "0.0", f"{self.high_freq:.1f}",
                        os.path.abspath(pred.file), f"{ev.start:.3f}", ev.label,
                        f"{ev.peak:.4f}"])
    self._elapsed += pred.seconds
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class JsonWriter:
  """A JSON list of {file, label, probabilities[, top_k, labels, windows, events]}."""

  def __init__(self, out: str, windows: bool, top_k: int, thresholds):
    self.paths = [out]
    self.windows, self.top_k, self.thresholds = windows, top_k, thresholds
    self.items: list[dict[str, Any]] = []

  def add(self, pred: Prediction) -> None:
    self.items.append(pred.to_dict(self.windows, self.top_k, self.thresholds))

  def close(self) -> None:
    tmp = f"{self.paths[0]}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(self.items, f, indent=1)
    os.replace(tmp, self.paths[0])
