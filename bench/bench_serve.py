"""Inference throughput and search-service latency on real audio, on this machine.

  python bench/bench_serve.py --workdir=RUN --audio=/tmp/shift/speakers [--requests=48]
      [--load_clients=16 --load_requests=128] [--only_load]

1. `python -m jaxaudio.predict` over every file of AUDIO (its own numbers: files/s and
   seconds of audio per second, model load excluded), the per-file CSV and, on a long
   recording made by concatenating 60 of the files, `--windows` with events.
2. `python -m jaxaudio.search index --ann` of AUDIO, then `python -m jaxaudio.search serve`
   as a real process on a loopback port; POST /api/query with uploads of the folder's files
   (each request a different file, round robin) from 1 and from 8 concurrent clients, exact
   and approximate search: p50 / p95 latency and requests per second over `--requests`
   requests per row (after 4 warm-up requests).
3. Load, side by side in one run: `--load_clients` concurrent clients send `--load_requests`
   uploads to a server that batches forward passes (the default) and to one that runs them
   one request at a time under a lock (`--nobatching`), and with `--baseline=CHECKOUT` to
   both of an earlier commit's server: p50 / p95 / max latency, requests per second, the
   server's CPU seconds per request, and its resident memory before the load (after warm-up), after it,
   and after four uploads of a 64 KB WAV whose header declares 1 Hz (8.9 hours once
   resampled) to /api/classify, which must be refused without memory growing.

`--only_load` skips 1 and the table of 2 (the index is still built).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time

import httpx2 as httpx
import numpy as np
import psutil
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxaudio.audio.io import audio_files  # noqa: E402  pylint: disable=wrong-import-position


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


@contextlib.contextmanager
def serving(index: str, *flags: str, cwd: str = ROOT):
  """(url, server process) of `python -m jaxaudio.search serve` on a free loopback port, run
  from the checkout `cwd` (this one, or --baseline's)."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen([sys.executable, "-m", "jaxaudio.search", "serve",
                             f"--index={index}", f"--port={port}", *flags], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    for _ in range(600):
      try:
        if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        time.sleep(0.2)
    yield url, server
  finally:
    server.terminate()
    server.wait(timeout=30)


def _asker(url: str, files: list[str]):
  """ask(i, ann) -> seconds: POST /api/query with the i-th file (round robin) as upload."""
  blobs = [(os.path.basename(f), open(f, "rb").read()) for f in files]

  def ask(i: int, ann: bool = False) -> float:
    name, data = blobs[i % len(blobs)]
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/api/query", files={"audio": (name, data)},
                   data={"k": "10", "ann": str(ann).lower()}, timeout=300)
    r.raise_for_status()
    return time.perf_counter() - t0
  return ask


def latency_table(index: str, files: list[str], requests: int) -> list[tuple]:
  with serving(index) as (url, _):
    ask = _asker(url, files)
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


def one_hz_wav(path: str) -> str:
  """A 64 KB 16-bit WAV of 32000 samples whose header declares 1 Hz: 8.9 hours of audio."""
  sf.write(path, np.zeros(32000, np.int16), 16000, subtype="PCM_16")
  data = bytearray(open(path, "rb").read())
  data[24:32] = struct.pack("<II", 1, 2)   # sample rate, byte rate
  open(path, "wb").write(bytes(data))
  return path


def load_row(index: str, files: list[str], clients: int, requests: int, hostile: str,
             *flags: str, cwd: str = ROOT) -> dict:
  """Latency, server CPU and memory under `clients` concurrent uploaders (the docstring)."""
  with serving(index, *flags, cwd=cwd) as (url, server):
    ask = _asker(url, files)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      list(pool.map(ask, range(2 * clients)))   # warm-up: every batch shape compiled
      proc = psutil.Process(server.pid)
      rss_before = proc.memory_info().rss
      cpu_before = sum(proc.cpu_times()[:2])
      t0 = time.perf_counter()
      lat = list(pool.map(ask, range(requests)))
      wall = time.perf_counter() - t0
      cpu = sum(proc.cpu_times()[:2]) - cpu_before
    rss_after = psutil.Process(server.pid).memory_info().rss
    codes = []
    for _ in range(4):
      with open(hostile, "rb") as f:
        codes.append(httpx.post(f"{url}/api/classify", files={"audio": ("1hz.wav", f)},
                                timeout=300).status_code)
    rss_hostile = psutil.Process(server.pid).memory_info().rss
  return {"p50": 1e3 * np.percentile(lat, 50), "p95": 1e3 * np.percentile(lat, 95),
          "max": 1e3 * max(lat), "rps": requests / wall, "cpu_ms": 1e3 * cpu / requests,
          "rss_before": rss_before / 1e6,
          "rss_after": rss_after / 1e6, "rss_hostile": rss_hostile / 1e6, "codes": codes}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a jaxaudio.main run")
  parser.add_argument("--audio", default="/tmp/shift/speakers")
  parser.add_argument("--requests", type=int, default=48)
  parser.add_argument("--load_clients", type=int, default=16)
  parser.add_argument("--load_requests", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=2, help="load rounds of each server")
  parser.add_argument("--batch_flags", default="",
                      help="serve flags of the batched server, e.g. '--max_batch=16'")
  parser.add_argument("--baseline", default="", help="a checkout of an earlier commit (git "
                      "worktree add DIR COMMIT) whose server, batched and --nobatching, joins "
                      "the load rounds: today's code side by side with this one")
  parser.add_argument("--only_load", action="store_true",
                      help="skip predict and the 1- and 8-client table")
  args = parser.parse_args()
  files = audio_files(args.audio)
  seconds = sum(sf.info(f).duration for f in files)
  print(f"{len(files)} files, {seconds:.0f} s of audio under {args.audio}")
  with tempfile.TemporaryDirectory() as tmp:
    if not args.only_load:
      print("\n| predict | result |\n|---|---|")
      for name, line in predict_rates(args.workdir, args.audio, tmp):
        print(f"| {name} | {re.sub(r'; skipped.*', '', line)} |")
    index = os.path.join(tmp, "index")
    out = _run("jaxaudio.search", "index", f"--workdir={args.workdir}", f"--audio={args.audio}",
               f"--index={index}", "--ann")
    print("\n" + out.strip().replace("\n", "  \n"))
    if not args.only_load:
      print("\n| search | clients | p50 ms | p95 ms | requests/s |\n|---|---:|---:|---:|---:|")
      for mode, clients, p50, p95, rps in latency_table(index, files, args.requests):
        print(f"| {mode} | {clients} | {p50:.0f} | {p95:.0f} | {rps:.1f} |")
    hostile = one_hz_wav(os.path.join(tmp, "one_hz.wav"))
    batched = f"batched {args.batch_flags or '(default)'}"
    locked = "lock per query (--nobatching)"
    servers = {batched: (args.batch_flags.split(), ROOT), locked: (["--nobatching"], ROOT)}
    if args.baseline:
      servers["baseline (default flags)"] = ([], os.path.abspath(args.baseline))
      servers["baseline --nobatching"] = (["--nobatching"], os.path.abspath(args.baseline))
    rows = []   # rounds alternate the servers, so a load that comes and goes hits them all
    for i in range(args.rounds):
      for name, (flags, cwd) in servers.items():
        rows.append((i + 1, name, load_row(index, files, args.load_clients, args.load_requests,
                                           hostile, *flags, cwd=cwd)))
    print(f"\n{args.load_clients} concurrent clients, {args.load_requests} uploads, exact "
          "search:\n\n| round | server | p50 ms | p95 ms | max ms | requests/s | server CPU ms a "
          "request | RSS before -> after MB | after 4 x 1 Hz WAV to /api/classify |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for i, name, r in rows:
      print(f"| {i} | {name} | {r['p50']:.0f} | {r['p95']:.0f} | {r['max']:.0f} | "
            f"{r['rps']:.1f} | {r['cpu_ms']:.1f} | {r['rss_before']:.0f} -> {r['rss_after']:.0f} "
            f"({100 * (r['rss_after'] / r['rss_before'] - 1):+.1f}%) | "
            f"{r['rss_hostile']:.0f} MB, HTTP {sorted(set(r['codes']))} |")
    for q in ("p50", "p95", "cpu_ms"):
      fast = np.median([r[q] for _, name, r in rows if name == batched])
      for other in [n for n in servers if n != batched]:
        slow = np.median([r[q] for _, name, r in rows if name == other])
        print(f"{q}: batched {fast:.0f}, {other} {slow:.0f} (median over rounds): "
              f"{slow / fast:.2f}x")


if __name__ == "__main__":
  main()
