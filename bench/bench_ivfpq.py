"""IVF-PQ (`search index --ann=ivfpq`) at millions of windows: memory, build, recall, latency.

  python bench/bench_ivfpq.py [--rows=10000000] [--dim=512] [--work=/tmp/bench_ivfpq] [--compare]

The rows are bench_search's synthetic clustered embeddings (2,000 centres, spread 0.35),
written as 1M-row segments of a real index folder (jaxaudio.search.store) with a manifest of
1,000-window files, so the build is the indexer's own path (jaxaudio.search.ann.upkeep:
train on a sample, add segment by segment from the memory-mapped rows, measure recall@10
against exact search on held-out rows at nprobe 1, 2, 4, ... until 0.95). Latency is the
Searcher's approximate call (80 candidates a query window for k=10, REFINE codes re-scored
exactly from the segments): medians of warm calls. --compare also times exact search (JAX)
and HNSW at the largest size whose float rows fit in memory here (--compare_rows).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from bench.bench_search import clustered, timed  # noqa: E402
from jaxaudio.search import ann, exact, store  # noqa: E402

SEGMENT_ROWS = 1_000_000
FILE_WINDOWS = 1000


def write_index(path: str, rows: int, dim: int, spread: float) -> store.Manifest:
  """An index folder of `rows` clustered rows in SEGMENT_ROWS-row segments (no model: the
  approximate index needs only the rows and the manifest)."""
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  segments, files = {}, []
  for i, first in enumerate(range(0, rows, SEGMENT_ROWS)):
    n = min(SEGMENT_ROWS, rows - first)
    name = store.segment_name(i + 1)
    emb = clustered(n, dim, spread=spread, points_seed=i)
    store.write_segment(path, name, emb, np.zeros(n, np.float32))
    segments[name] = n
    for s in range(0, n, FILE_WINDOWS):
      files.append(store.Entry(f"/synthetic/{first + s:012d}.wav", 0, 0, name, s,
                               min(FILE_WINDOWS, n - s), 10.0))
    print(f"  wrote {name}: {first + n:,} rows", flush=True)
  manifest = store.Manifest(model={"embedding_dim": dim}, segments=segments, files=files,
                            generation=len(segments))
  store.write_manifest(path, manifest)
  return manifest


def rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ivfpq(path: str, manifest: store.Manifest, rng) -> dict:
  t = time.perf_counter()
  entry = ann.upkeep(path, None, manifest, None, False, "ivfpq", False)
  build = time.perf_counter() - t
  file = os.path.join(path, entry["file"])
  dim = int(manifest.model["embedding_dim"])
  reader = ann.SpanRows(path, entry["spans"], manifest.segments, dim)
  codes = ann.Codes(ann.load(file), ann.live_ids(entry["spans"], manifest), reader, file,
                    refine=entry["refine"])
  n = manifest.live_rows
  one = reader.read(np.sort(rng.integers(0, n, 1)))
  four = reader.read(np.sort(rng.choice(n, 4, replace=False)))
  batch = reader.read(np.sort(rng.choice(n, 64, replace=False)))
  nprobe = entry["nprobe"]
  return {"entry": entry, "build": build,
          "t1": timed(lambda: codes.search(one, 80, nprobe), 10),
          "t4": timed(lambda: codes.search(four, 80, nprobe), 5),
          "tb": timed(lambda: codes.search(batch, 80, nprobe), 2),
          "bytes_per_row": entry["bytes"] / n}


def compare(rows: int, dim: int, spread: float, rng) -> list[str]:
  """Exact (JAX) and HNSW over `rows` rows held in memory, as bench_search measures them."""
  emb = clustered(rows, dim, spread=spread)
  fid = (np.arange(rows) // 8).astype(np.int32)
  t = time.perf_counter()
  index = exact.ExactIndex(emb, fid, int(fid[-1]) + 1)
  load = time.perf_counter() - t
  one, four = [emb[rng.integers(0, rows, 1)]], [emb[rng.integers(0, rows, 4)]]
  out = [f"| {rows:,} | exact (JAX) | {dim * 4} | {load:.1f} | 1 | - | "
         f"{1e3 * timed(lambda: index.search(one, 10), 5):.1f} | "
         f"{1e3 * timed(lambda: index.search(four, 10), 5):.1f} |"]
  print(out[-1], flush=True)
  t = time.perf_counter()
  graph = ann.build(emb)
  build = time.perf_counter() - t
  searchable = ann.Graph(graph, np.arange(rows))
  exact_rows = lambda q, k: index.search([w[None] for w in q], k, per_file=False)[1]  # noqa: E731
  recall = ann.recall_at_10(lambda q, k: searchable.search(q, k)[1], exact_rows, emb)
  per_row = dim * 4 + ann.M * 2 * 4 * 1.0   # float row + ~2M neighbour ids on level 0
  out.append(f"| {rows:,} | HNSW M={ann.M} ef={ann.EF_SEARCH} | {per_row:.0f} | {build:.0f} | "
             f"{recall:.3f} | - | {1e3 * timed(lambda: searchable.search(one[0], 80), 10):.2f} "
             f"| {1e3 * timed(lambda: searchable.search(four[0], 80), 5):.2f} |")
  print(out[-1], flush=True)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=10_000_000)
  ap.add_argument("--dim", type=int, default=512)
  ap.add_argument("--spread", type=float, default=0.35)
  ap.add_argument("--work", default="/tmp/bench_ivfpq")
  ap.add_argument("--compare", action="store_true", help="exact and HNSW at --compare_rows")
  ap.add_argument("--compare_rows", type=int, default=1_000_000)
  ap.add_argument("--keep", action="store_true", help="keep the index folder")
  ap.add_argument("--reuse", action="store_true",
                  help="take the rows a --keep run left in --work (same --rows) instead of "
                       "writing them again")
  args = ap.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  print(f"device: {jax.devices()[0].device_kind}, cores: {os.cpu_count()}, dim {args.dim}, "
        f"spread {args.spread}, {args.rows:,} rows", flush=True)
  rng = np.random.default_rng(1)
  t = time.perf_counter()
  if args.reuse and os.path.exists(os.path.join(args.work, store.MANIFEST)):
    manifest = store.read_manifest(args.work)
    manifest.ann = None
    assert manifest.live_rows == args.rows, (manifest.live_rows, args.rows)
  else:
    manifest = write_index(args.work, args.rows, args.dim, args.spread)
  print(f"  rows written in {time.perf_counter() - t:.0f} s", flush=True)
  r = ivfpq(args.work, manifest, rng)
  e = r["entry"]
  print(f"\nIVF-PQ at {args.rows:,} windows: {e['kind']}, {e['lists']} lists, "
        f"{e['code_bytes']} B codes; build (train + add + recall ladder) {r['build']:.0f} s; "
        f"index file {e['bytes'] / 2**20:.0f} MiB = {r['bytes_per_row']:.1f} B/window; "
        f"max RSS {rss_mb():.0f} MiB")
  print(f"recall@10 by nprobe ({e['recall_queries']} held-out queries, {ann.REFINE} re-scored): "
        f"{e['recall_by_nprobe']}; the ladder [nprobe, re-scored, recall]: {e['recall_ladder']}")
  print("| windows | method | RAM B/window | build s | recall@10 | nprobe | 1 window ms | "
        "4 windows ms |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.rows:,} | IVF-PQ {e['kind']} | {r['bytes_per_row'] + 16:.0f} | "
        f"{r['build']:.0f} | {e['recall_at_10']:.3f} | {e['nprobe']} | {1e3 * r['t1']:.2f} | "
        f"{1e3 * r['t4']:.2f} |  (64 one-window queries: {64 / r['tb']:.0f}/s)", flush=True)
  if not args.keep:
    shutil.rmtree(args.work, ignore_errors=True)
  if args.compare:
    compare(args.compare_rows, args.dim, args.spread, rng)


if __name__ == "__main__":
  main()
