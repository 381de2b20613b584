"""The on-disk search index: a manifest, embedding segments and the model that made them.

PATH/
  index.json          manifest: model identity (name, weights sha256, FrontendSpec, data
                      settings), segments and, per file, path, size, mtime, rows and duration
  seg-NNNNNN.emb.npy  float32 [rows, D] L2-normalised window embeddings
  seg-NNNNNN.off.npy  float32 [rows] window start in seconds
  model/              the exported model (jaxaudio.exported), so queries need nothing else
  ann-NNNNNN.faiss    optional approximate index (jaxaudio.search.ann): graph ids are the
                      segment rows its manifest entry's spans name, dead ones skipped

Updates never rewrite what is still valid: new and changed files go into new segments,
rows of changed and deleted files are dropped from the manifest, and the segments are
compacted into one when more than a quarter of their rows are dead. An update commits as it
goes (jaxaudio.search.indexer): every file is written and fsynced before the manifest that
names it is swapped in atomically, and the folder is fsynced after the swap, so a killed
update (or a power cut) leaves the last commit intact and its orphan files are removed by
the next run; a first build killed before its first commit leaves only files this writer
makes (OWN_FILES), which the next run recognises and clears. An flock on PATH/.lock keeps a
second writer out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
from typing import Any

import numpy as np

from jaxaudio.runtime.errors import SearchIndexError

FORMAT_VERSION = 1
MANIFEST = "index.json"
LOCK = ".lock"
COMPACT_DEAD_FRACTION = 0.25
MODEL = "model"
# Every name the index writer creates in PATH; a folder holding only these is an unfinished
# build of its own, anything else makes it someone else's folder.
OWN_FILES = re.compile(r"(\.lock|index\.json|model|model\.(tmp|old)-\d+|seg-\d+c?\.(emb|off)\.npy"
                       r"|ann-\d+\.faiss|\.index\.json\.tmp-\d+|beam-\d+)")


@dataclasses.dataclass
class Entry:
  """One indexed file: its identity on disk and its rows in a segment."""

  path: str
  size: int
  mtime_ns: int
  segment: str
  start: int
  count: int
  seconds: float


@dataclasses.dataclass
class Manifest:
  model: dict[str, Any]          # name, weights_sha256, embedding_dim, frontend, settings
  segments: dict[str, int]       # segment name -> rows stored in it
  files: list[Entry]
  generation: int = 0
  ann: dict[str, Any] | None = None
  # Set by an update's intermediate commits, None once it finished: {"fresh": the run was a
  # first build or a rebuild, "ann": it was to end with an approximate index}, so that a
  # rerun of the killed command completes what it set out to do.
  unfinished: dict[str, Any] | None = None

  @property
  def live_rows(self) -> int:
    return sum(e.count for e in self.files)

  def to_json(self) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "generation": self.generation,
            "model": self.model, "segments": self.segments, "ann": self.ann,
            "unfinished": self.unfinished, "files": [dataclasses.asdict(e) for e in self.files]}


def model_identity(meta: dict[str, Any]) -> dict[str, Any]:
  """What must match between an index and the model that extends or queries it."""
  return {k: meta[k] for k in ("model", "weights_sha256", "embedding_dim", "frontend",
                               "settings")}


def _damaged(path: str, what: str) -> SearchIndexError:
  return SearchIndexError(f"{path}: the search index is damaged ({what}); rebuild it with "
                     "python -m jaxaudio.search index --rebuild.")


def read_manifest(path: str) -> Manifest:
  """The manifest of the index at `path`; one clear error when there is none or it is bad."""
  file = os.path.join(path, MANIFEST)
  if not os.path.isfile(file):
    raise SearchIndexError(f"{path} is not a jaxaudio search index (no {MANIFEST}); build one with "
                      "python -m jaxaudio.search index --workdir=RUN --audio=FOLDER "
                      f"--index={path}.")
  try:
    with open(file) as f:
      raw = json.load(f)
    if isinstance(raw, dict) and "shards" in raw:   # jaxaudio.search.shards
      raise SearchIndexError(f"{path} is a sharded index (a list of {len(raw['shards'])} index "
                             "folders); query or serve it, and index, label or learn in one "
                             "of its shards' folders.")
    if raw.get("format_version") != FORMAT_VERSION:
      raise SearchIndexError(f"{path}: index format {raw.get('format_version')} is not "
                        f"{FORMAT_VERSION}; rebuild it with this jaxaudio (--rebuild).")
    return Manifest(model=raw["model"], segments={k: int(v) for k, v in raw["segments"].items()},
                    files=[Entry(**e) for e in raw["files"]], generation=int(raw["generation"]),
                    ann=raw.get("ann"), unfinished=raw.get("unfinished"))
  except (ValueError, KeyError, TypeError) as err:
    raise _damaged(path, f"{MANIFEST} is unreadable: {err}") from err


@contextlib.contextmanager
def writer_lock(path: str):
  """One writer at a time: an flock on PATH/.lock, released even if the writer dies."""
  fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
      raise SearchIndexError(f"{path} is being updated by another `search index` run; wait for "
                             "it to finish.") from err
    yield
  finally:
    os.close(fd)


def fsync_path(path: str) -> None:
  """Flush a file's or a folder's data and metadata to disk (a folder: its entries, so a
  rename or a new file in it survives a power cut)."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_manifest(path: str, manifest: Manifest) -> None:
  """Swap in `manifest` atomically: written and fsynced under a temporary name, renamed over
  index.json, then the folder fsynced so the rename itself is durable. Every file it names
  must already be fsynced (write_segment, install_model and ann.save do that)."""
  tmp = os.path.join(path, f".{MANIFEST}.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(manifest.to_json(), f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(path, MANIFEST))
  fsync_path(path)


def segment_name(generation: int) -> str:
  return f"seg-{generation:06d}"


def write_segment(path: str, name: str, embeddings: np.ndarray, offsets: np.ndarray) -> None:
  """Write and fsync a segment's two arrays; no manifest names it yet, so a crash midway
  leaves only orphans for remove_unreferenced."""
  for kind, arr in (("emb", embeddings), ("off", offsets)):
    with open(os.path.join(path, f"{name}.{kind}.npy"), "wb") as f:
      np.save(f, np.ascontiguousarray(arr, np.float32))
      f.flush()
      os.fsync(f.fileno())


def load_segment(path: str, name: str, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings [rows, dim], offsets [rows]) of one segment, memory-mapped and checked
  against the shape the manifest records."""
  out = []
  for kind, shape in (("emb", (rows, dim)), ("off", (rows,))):
    file = os.path.join(path, f"{name}.{kind}.npy")
    if not os.path.isfile(file):
      raise _damaged(path, f"{os.path.basename(file)} is missing")
    try:
      arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
      raise _damaged(path, f"{os.path.basename(file)} is unreadable: {err}") from err
    if arr.shape != shape or arr.dtype != np.float32:
      raise _damaged(path, f"{os.path.basename(file)} holds {arr.dtype}{list(arr.shape)}, the "
                     f"manifest says float32{list(shape)}")
    out.append(arr)
  return out[0], out[1]


@dataclasses.dataclass
class Rows:
  """The live rows of an index, file by file in manifest order."""

  embeddings: np.ndarray | None   # float32 [N, D]; None when not asked for
  offsets: np.ndarray       # float32 [N]
  file_of_row: np.ndarray   # int32 [N], index into files
  files: list[Entry]


def load_rows(path: str, manifest: Manifest, embeddings: bool = True) -> Rows:
  """Gather every live row (one fancy-index per segment) in manifest file order; without
  `embeddings` only offsets and file ids (approximate search keeps its own copy of the
  vectors, so it need not read them)."""
  dim = int(manifest.model["embedding_dim"])
  segments = {name: load_segment(path, name, rows, dim)
              for name, rows in manifest.segments.items()}
  n = manifest.live_rows
  emb = np.empty((n, dim), np.float32) if embeddings else None
  off = np.empty(n, np.float32)
  fid = np.repeat(np.arange(len(manifest.files), dtype=np.int32),
                  [e.count for e in manifest.files])
  by_segment: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
  pos = 0
  for e in manifest.files:
    if e.segment not in segments or e.start + e.count > manifest.segments[e.segment]:
      raise _damaged(path, f"{e.path} points at rows {e.start}..{e.start + e.count} of "
                     f"segment {e.segment}, which does not hold them")
    dst, src = by_segment.setdefault(e.segment, ([], []))
    dst.append(np.arange(pos, pos + e.count))
    src.append(np.arange(e.start, e.start + e.count))
    pos += e.count
  for name, (dst, src) in by_segment.items():
    d, s = np.concatenate(dst), np.concatenate(src)
    off[d] = segments[name][1][s]
    if emb is not None:
      emb[d] = segments[name][0][s]
  return Rows(emb, off, fid, list(manifest.files))


def foreign_files(path: str) -> list[str]:
  """Names in the folder `path` that the index writer never makes (sorted)."""
  return sorted(n for n in os.listdir(path) if not OWN_FILES.fullmatch(n))


def remove_unreferenced(path: str, manifest: Manifest | None,
                        in_flight: frozenset[str] = frozenset()) -> None:
  """Delete what a killed or finished writer left that `manifest` does not name: segments,
  ANN graphs, temporary manifests, model copies and Beam job folders; with no manifest (a
  first build that never committed), every such file but the lock. `in_flight`: names a
  running job is still writing (a Beam job's shard segments and done records), kept. Only
  the lock holder may call this."""
  keep = {LOCK, MANIFEST} | set(in_flight)
  if manifest is not None:
    keep |= {MODEL} | {f"{s}.{k}.npy" for s in manifest.segments for k in ("emb", "off")}
    if manifest.ann:
      keep.add(manifest.ann["file"])
  for name in os.listdir(path):
    if name in keep or not OWN_FILES.fullmatch(name):
      continue
    file = os.path.join(path, name)
    if os.path.isdir(file) and not os.path.islink(file):
      shutil.rmtree(file)
    else:
      os.remove(file)


def _fsync_tree(root: str) -> None:
  for folder, _, files in os.walk(root):
    for f in files:
      fsync_path(os.path.join(folder, f))
    fsync_path(folder)


def installed_weights(path: str) -> str | None:
  """The weights sha256 of the model copy in PATH/model, None when there is no whole one."""
  try:
    with open(os.path.join(path, MODEL, "meta.json")) as f:
      return json.load(f).get("weights_sha256")
  except (OSError, ValueError, AttributeError):
    return None


def install_model(path: str, export_dir: str) -> None:
  """Copy the exported model into PATH/model, fsynced, replacing any previous copy by
  renames, so a crash leaves either copy whole (plus a model.tmp-/model.old- leftover that
  remove_unreferenced clears)."""
  dst = os.path.join(path, MODEL)
  tmp, old = f"{dst}.tmp-{os.getpid()}", f"{dst}.old-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(export_dir, tmp)
  _fsync_tree(tmp)
  if os.path.isdir(dst):
    os.replace(dst, old)
  os.replace(tmp, dst)
  fsync_path(path)
  shutil.rmtree(old, ignore_errors=True)
