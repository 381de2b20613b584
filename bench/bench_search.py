"""Query latency and throughput of search against index size: exact (JAX) and HNSW (FAISS).

  python bench/bench_search.py [--sizes=10000,100000,1000000] [--dim=512] [--ann]

The rows are synthetic but shaped like audio embeddings: L2-normalised points around 2,000
cluster centres (a collection of many sounds of a few thousand kinds), so that HNSW's recall
is measured on clustered data, not on uniform noise where every method is at its worst.
Times are medians of repeated warm calls (the first call compiles); "1 window" is a query
shorter than one model window, "4 windows" a clip of about 5 s with aiSFX. Throughput is
64 one-window queries per call. ANN recall@10 is window-level against exact search, query
row left out (jaxaudio.search.ann.recall_at_10). With --ann a second table times the
incremental graph update (1% rows added, 10% dead) against a rebuild.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxaudio.search import ann, exact  # noqa: E402  pylint: disable=wrong-import-position


def clustered(n: int, dim: int, seed: int = 0, centres: int = 2000, spread: float = 0.35,
              points_seed: int | None = None) -> np.ndarray:
  """n rows around the cluster centres of `seed`; points_seed draws other rows around the
  same centres."""
  rng = np.random.default_rng(seed)
  c = rng.standard_normal((centres, dim)).astype(np.float32)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  if points_seed is not None:
    rng = np.random.default_rng(points_seed)
  out = np.empty((n, dim), np.float32)
  for s in range(0, n, 100_000):
    m = min(100_000, n - s)
    x = c[rng.integers(0, centres, m)] + spread * rng.standard_normal((m, dim)).astype(
        np.float32) / np.sqrt(dim)
    out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def timed(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def incremental_update(graph, emb: np.ndarray, n: int, rng, build: float, spread: float
                       ) -> str:
  """Add 1% new rows to `graph` (the indexer's update path), mark a random 10% of all rows
  dead, and measure recall@10 over the live rows against exact search over the same rows."""
  extra = clustered(n // 100, emb.shape[1], spread=spread, points_seed=1)
  t = time.perf_counter()
  ann.add(graph, extra)
  add = time.perf_counter() - t
  total = n + len(extra)
  alive = rng.random(total) >= 0.1
  to_live = np.where(alive, np.cumsum(alive) - 1, -1)
  live = np.concatenate([emb, extra])[alive]
  searchable = ann.Graph(graph, to_live)
  exact_live = exact.ExactIndex(live, np.arange(len(live), dtype=np.int32) // 8,
                                (len(live) - 1) // 8 + 1)
  rows = lambda q, k: exact_live.search([w[None] for w in q], k, per_file=False)[1]  # noqa: E731
  recall = ann.recall_at_10(lambda q, k: searchable.search(q, k)[1], rows, live)
  one = live[rng.integers(0, len(live), 1)]
  latency = timed(lambda: searchable.search(one, 80), 20)
  return f"| {total:,} | {add:.2f} | {build:.1f} | {recall:.3f} | {1e3 * latency:.2f} |"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="10000,100000,1000000")
  ap.add_argument("--dim", type=int, default=512)
  ap.add_argument("--ann", action="store_true", help="also build and time FAISS HNSW")
  ap.add_argument("--blocked", action="store_true",
                  help="also time few-window queries block by block instead of in one pass")
  ap.add_argument("--spread", type=float, default=0.35,
                  help="noise around cluster centres: 0.35 -> cosine to the centre ~0.94, "
                       "1.0 -> ~0.7 (clusters overlap, harder for HNSW)")
  args = ap.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"cores: {os.cpu_count()}, dim {args.dim}, spread {args.spread}")
  rng = np.random.default_rng(1)
  print("| windows | method | 1 window ms | 4 windows ms | 64 queries/s | recall@10 | build s |")
  print("|---|---|---|---|---|---|---|")
  updates = []
  for n in [int(s) for s in args.sizes.split(",")]:
    emb = clustered(n, args.dim, spread=args.spread)
    fid = (np.arange(n) // 8).astype(np.int32)          # 8 windows per file
    t = time.perf_counter()
    index = exact.ExactIndex(emb, fid, int(fid[-1]) + 1)
    load = time.perf_counter() - t
    one = [emb[rng.integers(0, n, 1)]]
    four = [emb[rng.integers(0, n, 4)]]
    batch = [emb[i:i + 1] for i in rng.integers(0, n, 64)]
    repeats = 20 if n <= 100_000 else 5
    t1 = timed(lambda: index.search(one, 10), repeats)
    t4 = timed(lambda: index.search(four, 10), repeats)
    tb = timed(lambda: index.search(batch, 10), max(2, repeats // 4))
    print(f"| {n:,} | exact (JAX) | {1e3 * t1:.1f} | {1e3 * t4:.1f} | {64 / tb:.0f} | 1 | "
          f"{load:.1f} |", flush=True)
    if args.blocked:   # the same queries scored block by block, as calls of many windows are
      saved, exact.MEMORY_BOUND_WINDOWS = exact.MEMORY_BOUND_WINDOWS, 0
      jax.clear_caches()
      b1 = timed(lambda: index.search(one, 10), repeats)
      b4 = timed(lambda: index.search(four, 10), repeats)
      exact.MEMORY_BOUND_WINDOWS = saved
      jax.clear_caches()
      print(f"| {n:,} | exact, {exact.BLOCK}-row blocks | {1e3 * b1:.1f} | {1e3 * b4:.1f} | "
            "- | 1 | - |", flush=True)
    if args.ann:
      t = time.perf_counter()
      graph = ann.build(emb)
      build = time.perf_counter() - t
      searchable = ann.Graph(graph, np.arange(n))
      rows = lambda q, k: index.search([w[None] for w in q], k, per_file=False)[1]  # noqa: E731
      recall = ann.recall_at_10(lambda q, k: searchable.search(q, k)[1], rows, emb)
      q1, q4 = one[0], four[0]
      qb = np.concatenate(batch)
      a1 = timed(lambda: searchable.search(q1, 80), repeats)
      a4 = timed(lambda: searchable.search(q4, 80), repeats)
      ab = timed(lambda: searchable.search(qb, 80), max(2, repeats // 4))
      print(f"| {n:,} | HNSW M={ann.M} ef={ann.EF_SEARCH} | {1e3 * a1:.2f} | {1e3 * a4:.2f} | "
            f"{64 / ab:.0f} | {recall:.3f} | {build:.1f} |", flush=True)
      updates.append(incremental_update(graph, emb, n, rng, build, args.spread))
      del graph, searchable
    index = emb = None  # free 4 GB before the next size
  if updates:
    print("\nHNSW kept up to date instead of rebuilt (what `search index --ann` does on a "
          "change): the same graph after 1% more rows are added and 10% of rows die")
    print("| windows | add 1% s | rebuild s | recall@10 (10% dead skipped) | 1 window ms |")
    print("|---|---|---|---|---|")
    for line in updates:
      print(line)


if __name__ == "__main__":
  main()
