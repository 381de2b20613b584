"""A sharded search index: several index folders answered as one, with one merged top-k.

An archive embedded on several machines (or by several Beam jobs) is several index folders,
each a whole index (jaxaudio.search.store) with its own segments, model copy and optional
approximate index. A sharded index names them:

  PATH/index.json   {"format_version": 1, "shards": ["a", "/data/b", ...]}
                    (paths relative to PATH or absolute)

or PATH is a folder whose subfolders are indexes and which has no index.json of its own
(Python only: `search serve` watches PATH/index.json, so give it the listed form, which
`search index --index=PATH --shards=A,B` writes). The Searcher (searcher.py) opens every
shard, searches each and merges their top k as one index over the union of their rows
ranks them: by score, ties by file path and then offset (the order of an index's rows:
files by path, windows by time), so exact search over the shards returns what exact search
over one index of the same files returns. The shards must be made by the same model with
the same settings and hold disjoint files. A server reloads when PATH/index.json or a
shard's manifest is rewritten (a commit to one shard is enough).
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxaudio.runtime.errors import SearchIndexError
from jaxaudio.search import store

KEY = "shards"


def shard_paths(path: str) -> list[str] | None:
  """The shard folders of the sharded index at `path` (absolute, in listed order), or None
  when `path` is not a sharded index."""
  file = os.path.join(path, store.MANIFEST)
  if os.path.isfile(file):
    try:
      with open(file) as f:
        raw = json.load(f)
    except (OSError, ValueError):
      return None           # store.read_manifest names the damage
    if not isinstance(raw, dict) or KEY not in raw:
      return None
    listed = raw[KEY]
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
      raise SearchIndexError(f"{file}: '{KEY}' must be a non-empty list of index folders; "
                             "write it again with python -m jaxaudio.search index "
                             f"--index={path} --shards=A,B.")
    return [os.path.normpath(os.path.join(path, p)) for p in listed]
  if not os.path.isdir(path):
    return None
  subs = sorted(os.path.join(path, n) for n in os.listdir(path)
                if os.path.isfile(os.path.join(path, n, store.MANIFEST)))
  return [s for s in subs if shard_paths(s) is None] or None   # indexes, not lists of them


def check(path: str, manifests: list[store.Manifest], shards: list[str]) -> None:
  """One model identity across the shards and no file in two of them."""
  for m, p in zip(manifests[1:], shards[1:]):
    if m.model != manifests[0].model:
      what = [k for k in m.model if manifests[0].model.get(k) != m.model[k]]
      raise SearchIndexError(f"{path}: shard {p} was built with another {' and '.join(what)} "
                             f"than shard {shards[0]}; index every shard with the same model "
                             "and settings (or --rebuild the odd one).")
  owner: dict[str, str] = {}
  for m, p in zip(manifests, shards):
    for e in m.files:
      if e.path in owner:
        raise SearchIndexError(f"{path}: {e.path} is indexed in two shards ({owner[e.path]} "
                               f"and {p}); each file must live in one shard, so remove it "
                               "from one and update that shard.")
      owner[e.path] = p


def write(path: str, shards: list[str]) -> dict[str, Any]:
  """Write (or rewrite) the sharded index at `path` naming `shards`, after checking each is
  an index of the same model with files of its own; atomic and fsynced like
  store.write_manifest. Returns {"shards", "files", "rows"}."""
  path = os.path.abspath(path)
  if not shards:
    raise SearchIndexError("--shards needs at least one index folder, e.g. --shards=A,B.")
  full = [os.path.abspath(s) for s in shards]
  if os.path.isfile(os.path.join(path, store.MANIFEST)) and shard_paths(path) is None:
    raise SearchIndexError(f"{path} is an index of its own, not a list of shards; pass a new "
                           "folder as --index with --shards.")
  if path in full:
    raise SearchIndexError(f"{path} cannot be a shard of itself; pass other folders as "
                           "--shards.")
  manifests = []
  for s in full:
    if shard_paths(s) is not None and not os.path.isfile(os.path.join(s, store.MANIFEST)):
      raise SearchIndexError(f"{s} is a folder of indexes, not an index; list its index "
                             "folders in --shards.")
    manifests.append(store.read_manifest(s))
  check(path, manifests, full)
  os.makedirs(path, exist_ok=True)
  listed = [os.path.relpath(s, path) if s.startswith(path + os.sep) else s for s in full]
  tmp = os.path.join(path, f".{store.MANIFEST}.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump({"format_version": store.FORMAT_VERSION, KEY: listed}, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(path, store.MANIFEST))
  store.fsync_path(path)
  return {"shards": len(full), "files": sum(len(m.files) for m in manifests),
          "rows": sum(m.live_rows for m in manifests)}
