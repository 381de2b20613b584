"""Search quality of one or more indexes on a labelled folder: does query-by-example return
files of the query's class? (python -m jaxaudio.search does the searching.)

  python bench/search_quality.py --queries=/tmp/speech/test --index=/tmp/speech-index-pre \
      --index=/tmp/speech-index

Every audio file under --queries is a query (its label: its parent folder's name); the
query file itself is left out of its results. Prints, per index: P@1, P@5 and P@10 over
files (label of a result = its parent folder's name), and the median warm query time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxaudio.audio.io import audio_files  # noqa: E402  pylint: disable=wrong-import-position
from jaxaudio.search.searcher import Searcher  # noqa: E402  pylint: disable=wrong-import-position


def label(path: str) -> str:
  return os.path.basename(os.path.dirname(path))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--queries", required=True)
  ap.add_argument("--index", action="append", required=True)
  ap.add_argument("--ann", action="store_true")
  args = ap.parse_args()
  paths = audio_files(args.queries)
  print(f"{len(paths)} queries from {args.queries}")
  print("| index | model weights | P@1 | P@5 | P@10 | query ms (warm, median) |")
  print("|---|---|---:|---:|---:|---:|")
  for index in args.index:
    s = Searcher(index, use_ann=args.ann)
    queries = [s.embed_audio(p) for p in paths]
    s.search(queries[:1], k=11)
    times, p1, p5, p10 = [], [], [], []
    for path, q in zip(paths, queries):
      t = time.perf_counter()
      hits = s.search([q], k=11)[0]
      times.append(time.perf_counter() - t)
      rel = [label(h.file) == label(path) for h in hits if h.file != os.path.abspath(path)][:10]
      p1.append(rel[0])
      p5.append(np.mean(rel[:5]))
      p10.append(np.mean(rel))
    print(f"| {index} | {s.manifest.model['weights_sha256'][:12]} | {np.mean(p1):.3f} | "
          f"{np.mean(p5):.3f} | {np.mean(p10):.3f} | {1e3 * np.median(times):.2f} |")


if __name__ == "__main__":
  main()
