"""Speed of learn, rank and detect (issue 25's goals: learn on 100k windows under 10 s, rank and
detect on 1M under 5 s on a 2-core CPU): synthetic indexes of 512-d L2-normalised rows, 1,000
windows a file, 200 labels (about half positive) of one class; the index is loaded once.
rank --strategy=hybrid is timed in its search phase (19 positive labels).

  python bench/bench_learn.py [--sizes=100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxaudio.search import learn, store  # noqa: E402  pylint: disable=wrong-import-position
from jaxaudio.search.labels import Label, LabelStore  # noqa: E402  pylint: disable=wrong-import-position

PER_FILE = 1000


def synthetic_index(path: str, n: int, dim: int = 512, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  emb = rng.standard_normal((n, dim)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  offsets = np.tile(np.arange(PER_FILE) * 0.5, n // PER_FILE).astype(np.float32)
  entries = [store.Entry(f"/archive/{i}.wav", 1, 1, "seg-000001", i * PER_FILE, PER_FILE,
                         PER_FILE * 0.5 + 0.5) for i in range(n // PER_FILE)]
  store.write_segment(path, "seg-000001", emb, offsets)
  frontend = {"frames_per_window": 100, "hop_length": 160, "sample_rate": 16000, "fmax": 8000.0}
  store.write_manifest(path, store.Manifest(
      model={"model": "synthetic", "weights_sha256": "0" * 64, "embedding_dim": dim,
             "frontend": frontend, "settings": {"window_hop": 0.5}},
      segments={"seg-000001": n}, files=entries, generation=1))


def timed(fn, *args):
  t = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - t


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="100000,1000000")
  args = parser.parse_args()
  for n in (int(s) for s in args.sizes.split(",")):
    folder = tempfile.mkdtemp(prefix="bench-learn-")
    try:
      synthetic_index(folder, n)
      rng = np.random.default_rng(1)
      db = LabelStore(folder)
      db.add([Label(f"/archive/{i}.wav", float(s), float(s) + 1.0, "x", bool(rng.random() < 0.5))
              for i, s in zip(rng.integers(0, n // PER_FILE, 200), rng.integers(0, 400, 200))])
      labels = db.all(["x"])
      db.close()
      archive, t_open = timed(learn.open_archive, folder)
      (clf,), t_learn = timed(learn.learn, folder, ["x"], labels, learn.WEAK_WEIGHT, learn.FOLDS,
                              0, archive)
      _, t_rank = timed(learn.rank, archive, clf, labels, 50, "mixed")
      # hybrid while it searches: the nearest neighbours of the positives (one fewer than
      # the hand-over), every window scored against them
      few = [lab for lab in labels if not lab.positive] + [
          lab for lab in labels if lab.positive][:learn.HYBRID_POSITIVES - 1]
      _, t_hybrid = timed(learn.rank, archive, clf, few, 50, "hybrid")
      _, t_detect = timed(learn.detect, archive, clf, 0.5)
      print(f"{n} windows: load {t_open:.2f} s, learn {t_learn:.2f} s (5 folds + final, "
            f"compilation included), rank {t_rank:.2f} s (mixed), {t_hybrid:.2f} s (hybrid, "
            f"searching), detect {t_detect:.2f} s", flush=True)
    finally:
      shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
  main()
