"""Inference throughput and search-service latency on real audio, on this machine.

  python bench/bench_serve.py --workdir=RUN --audio=/tmp/shift/speakers [--requests=48]

1. `python -m jaxaudio.predict` over every file of AUDIO (its own numbers: files/s and
   seconds of audio per second, model load excluded), the per-file CSV and, on a long
   recording made by concatenating 60 of the files, `--windows` with events.
2. `python -m jaxaudio.search index --ann` of AUDIO, then `python -m jaxaudio.search serve`
   as a real process on a loopback port; POST /api/query with uploads of the folder's files
   (each request a different file, round robin) from 1 and from 8 concurrent clients, exact
   and approximate search: p50 / p95 latency and requests per second over `--requests`
   requests per row (after 4 warm-up requests).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import httpx2 as httpx
import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxaudio.embedder import audio_files  # noqa: E402  pylint: disable=wrong-import-position


def _run(*args: str) -> str:
  r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                     check=False)
  if r.returncode:
    raise SystemExit(f"{' '.join(args[:2])} failed:\n{r.stderr[-2000:]}")
  return r.stdout


def predict_rates(workdir: str, audio: str, tmp: str) -> list[tuple[str, str]]:
  rows = []
  out = _run("jaxaudio.predict", f"--workdir={workdir}", f"--audio={audio}",
             f"--out={tmp}/p.csv")
  rows.append(("folder, per file", out.splitlines()[0]))
  files = audio_files(audio)[:60]
  x, sr = [], 0
  for f in files:
    y, sr = sf.read(f, dtype="float32", always_2d=True)
    x += [y.mean(1), np.zeros(sr // 2, np.float32)]
  long = os.path.join(tmp, "long.wav")
  sf.write(long, np.concatenate(x), sr)
  out = _run("jaxaudio.predict", f"--workdir={workdir}", f"--audio={long}",
             f"--out={tmp}/long.csv", "--windows", "--hop=0.25")
  rows.append((f"one {len(np.concatenate(x)) / sr:.0f} s recording, --windows --hop=0.25",
               out.splitlines()[0]))
  return rows


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def latency_table(index: str, files: list[str], requests: int) -> list[tuple]:
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen([sys.executable, "-m", "jaxaudio.search", "serve",
                             f"--index={index}", f"--port={port}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    for _ in range(600):
      try:
        if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        time.sleep(0.2)
    blobs = [(os.path.basename(f), open(f, "rb").read()) for f in files]

    def ask(i: int, ann: bool) -> float:
      name, data = blobs[i % len(blobs)]
      t0 = time.perf_counter()
      r = httpx.post(f"{url}/api/query", files={"audio": (name, data)},
                     data={"k": "10", "ann": str(ann).lower()}, timeout=120)
      r.raise_for_status()
      return time.perf_counter() - t0

    rows = []
    for ann in (False, True):
      for clients in (1, 8):
        for i in range(4):
          ask(i, ann)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
          lat = list(pool.map(lambda i, a=ann: ask(i, a), range(requests)))
        wall = time.perf_counter() - t0
        rows.append(("approximate (HNSW)" if ann else "exact", clients,
                     1e3 * np.percentile(lat, 50), 1e3 * np.percentile(lat, 95),
                     requests / wall))
    return rows
  finally:
    server.terminate()
    server.wait(timeout=30)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a jaxaudio.main run")
  parser.add_argument("--audio", default="/tmp/shift/speakers")
  parser.add_argument("--requests", type=int, default=48)
  args = parser.parse_args()
  files = audio_files(args.audio)
  seconds = sum(sf.info(f).duration for f in files)
  print(f"{len(files)} files, {seconds:.0f} s of audio under {args.audio}")
  with tempfile.TemporaryDirectory() as tmp:
    print("\n| predict | result |\n|---|---|")
    for name, line in predict_rates(args.workdir, args.audio, tmp):
      print(f"| {name} | {re.sub(r'; skipped.*', '', line)} |")
    index = os.path.join(tmp, "index")
    out = _run("jaxaudio.search", "index", f"--workdir={args.workdir}", f"--audio={args.audio}",
               f"--index={index}", "--ann")
    print("\n" + out.strip().replace("\n", "  \n"))
    print(f"\n| search | clients | p50 ms | p95 ms | requests/s |\n|---|---:|---:|---:|---:|")
    for mode, clients, p50, p95, rps in latency_table(index, files, args.requests):
      print(f"| {mode} | {clients} | {p50:.0f} | {p95:.0f} | {rps:.1f} |")


if __name__ == "__main__":
  main()
