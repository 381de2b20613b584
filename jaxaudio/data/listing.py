"""A validated listing of clips: files or segments, their labels, groups and splits."""

from __future__ import annotations
import dataclasses
import os
from collections import Counter
from typing import Any


SPLITS = ("train", "validation", "test")


SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation",
                "val": "validation", "valid": "validation", "dev": "validation",
                "test": "test", "testing": "test"}


@dataclasses.dataclass(frozen=True)
class Clip:
  """One labelled recording. `key` is stable across runs (a path, or tfds:<name>/<split>/<i>)."""

  key: str
  labels: tuple[str, ...]
  split: str
  path: str | None = None      # audio file; None for TFDS examples
  tfds_index: int = -1         # position in its TFDS split
  fold: int = 0                # a CSV's `fold` column (ESC-50), 0 when there is none
  group: str = ""              # speaker / session / source (data.group); "" = none
  start: float = 0.0           # a segment of the file (a CSV's start/end columns), seconds;
  end: float = 0.0             # end 0 = the whole file

  @property
  def span(self) -> tuple[float, float] | None:
    return (self.start, self.end) if self.end > 0 else None


@dataclasses.dataclass
class Listing:
  source: str
  clips: list[Clip]
  classes: tuple[str, ...]
  multi_label: bool
  ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  tfds: dict[str, Any] | None = None   # name, data_dir, splits, audio/label keys, sample rate

  def split(self, name: str) -> list[Clip]:
    return [c for c in self.clips if c.split == name]

  def fingerprint_items(self) -> list[Any]:
    """What the cache key hashes: path, size and mtime of every file, labels and split."""
    items = []
    for c in self.clips:
      if c.path:
        try:
          st = os.stat(c.path)
          stat = (st.st_size, st.st_mtime_ns)
        except OSError:
          stat = (-1, -1)
      else:
        stat = (c.tfds_index, 0)
      items.append((c.key, stat, c.labels, c.split) + ((c.group,) if c.group else ()))
    return items

  def groups(self, name: str) -> dict[str, int]:
    """Clips per group in split `name` (empty without data.group)."""
    return dict(sorted(Counter(c.group for c in self.split(name) if c.group).items()))


def clip_label(c: Clip) -> str:
  return c.labels[0] if c.labels else ""
