"""`search index` on Apache Beam against today's single-process command, side by side.

  python bench/bench_beam.py [--files=120] [--seconds=12] [--rounds=2] [--model=EXPORT_DIR]
                             [--cores_per_worker=K] [--commands=single,beam-1,beam-2]

Writes --files synthetic recordings of --seconds each (tones with envelopes plus noise, at
32 kHz so every file is resampled as an archive's would be), then indexes the same folder
with three commands, each into a new index, --rounds times in turn (A B C A B C ...):

  single   python -m jaxaudio.search index --model=M --audio=F --index=I
  beam-1   ... --runner=DirectRunner --direct_num_workers=1
  beam-2   ... --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

and prints, per command, the wall time of the whole command (process start, imports, model
load and compile, the pipeline's worker start-up: everything a user waits for) and the
windows per second that makes, the best of the rounds (other processes share the machine),
and the CPU seconds it used with every process it started (less sensitive to them),
then the two ratios the goals name: beam-2 / beam-1 windows/s (goal >= 1.7) and the overhead
of beam-1 against single (goal <= 10%). It also checks that each Beam index holds the single
index's rows bit for bit.

--cores_per_worker=K emulates a machine with K cores for every worker: each command gets
K cores per worker it runs (single and beam-1 K, beam-2 2K; os.sched_setaffinity, which
its workers inherit) and XLA, BLAS and OpenMP are told to use K threads, so the ratio
beam-2 / beam-1 measures how the Beam path scales with workers rather than how one process
already fills this machine (unpinned, one `search index` uses 1.9 of its 2 cores, so two
workers cannot add throughput here).

--commands runs a subset (at least beam-1 and one other; the rows are checked against the
first command's index): --commands=beam-1,beam-2 measures the scaling on an archive large
enough that the workers' start-up (a process, its imports, the model's load and compile:
~20 s of CPU each) stops dominating, without the single-process run it was already compared
with on a smaller one.

Without --model it trains the tests' tiny scratch model (about a minute), whose forward pass
is far cheaper than a real model's; pass an aiSFX export for figures that mean something.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable=wrong-import-position
from bench_index_kill import tiny_model  # noqa: E402
from jaxaudio.search import store  # noqa: E402

RATE = 32000
COMMANDS = {
    "single": [],
    "beam-1": ["--runner=DirectRunner", "--direct_num_workers=1"],
    "beam-2": ["--runner=DirectRunner", "--direct_num_workers=2",
               "--direct_running_mode=multi_processing"],
}


def write_audio(folder: str, files: int, seconds: float, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  n = int(RATE * seconds)
  t = np.arange(n) / RATE
  for i in range(files):
    x = 0.02 * rng.uniform(0.2, 1.0) * rng.standard_normal(n)
    for _ in range(rng.integers(2, 5)):
      env = np.clip(np.sin(np.pi * (t / t[-1] * rng.uniform(0.5, 6) + rng.uniform())), 0, 1)
      x += rng.uniform(0.05, 0.3) * env * np.sin(2 * np.pi * rng.uniform(80, 6000) * t)
    sf.write(os.path.join(folder, f"rec_{i:05d}.wav"), x.astype(np.float32), RATE)


def _cpu() -> float:
  use = resource.getrusage(resource.RUSAGE_CHILDREN)
  return use.ru_utime + use.ru_stime


WORKERS = {"single": 1, "beam-1": 1, "beam-2": 2}


def limits(name: str, cores_per_worker: int) -> tuple[dict[str, str] | None, object]:
  """(environment, preexec function) giving `name` cores_per_worker cores a worker; (None,
  None) for no limit."""
  if not cores_per_worker:
    return None, None
  k = cores_per_worker
  cores = sorted(os.sched_getaffinity(0))[:k * WORKERS[name]]
  if len(cores) < k * WORKERS[name]:
    raise SystemExit(f"--cores_per_worker={k}: {name} needs {k * WORKERS[name]} cores, "
                     f"this machine lets the bench use {len(os.sched_getaffinity(0))}")
  threads = {v: str(k) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
  xla = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen={k > 1} "
         f"intra_op_parallelism_threads={k}").strip()
  return dict(os.environ, XLA_FLAGS=xla, **threads), lambda: os.sched_setaffinity(0, cores)


def run(name: str, model: str, audio: str, index: str, cores_per_worker: int = 0
        ) -> tuple[float, float, str]:
  """(wall s, CPU s of the command and every process it started, its summary line)."""
  shutil.rmtree(index, ignore_errors=True)
  cmd = [sys.executable, "-m", "jaxaudio.search", "index", f"--model={model}",
         f"--audio={audio}", f"--index={index}", *COMMANDS[name]]
  env, preexec = limits(name, cores_per_worker)
  t, cpu = time.perf_counter(), _cpu()
  r = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, env=env,
                     preexec_fn=preexec)
  wall, cpu = time.perf_counter() - t, _cpu() - cpu
  if r.returncode:
    raise SystemExit(f"{name} failed:\n{r.stdout}\n{r.stderr[-3000:]}")
  return wall, cpu, (r.stdout.strip().splitlines() or [""])[-1]


def rows(index: str):
  m = store.read_manifest(index)
  r = store.load_rows(index, m)
  return [(e.path, e.count, e.seconds) for e in m.files], r.embeddings, r.offsets


def compare(got, want) -> str:
  """'bitwise', or what differs: the files, the offsets, or how many embedding rows and by
  how much (max abs difference; the rows are unit vectors)."""
  if got[0] != want[0]:
    return "DIFFERENT files or row counts"
  if not np.array_equal(got[2], want[2]):
    return "DIFFERENT offsets"
  rows = np.flatnonzero(np.any(got[1] != want[1], axis=1))
  if not len(rows):
    return "bitwise"
  return (f"{len(rows)} of {len(got[1])} embedding rows differ, max abs "
          f"{np.abs(got[1] - want[1]).max():.1e}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--files", type=int, default=120)
  ap.add_argument("--seconds", type=float, default=12.0)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--model", default=None)
  ap.add_argument("--cores_per_worker", type=int, default=0,
                  help="pin each command to this many cores a worker (0: no limit)")
  ap.add_argument("--commands", default=",".join(COMMANDS),
                  help="comma-separated subset of " + ", ".join(COMMANDS))
  args = ap.parse_args()
  names = [c for c in args.commands.split(",") if c]
  if len(names) < 2 or not set(names) <= set(COMMANDS) or "beam-1" not in names:
    raise SystemExit(f"--commands={args.commands}: name beam-1 and at least one of "
                     f"{', '.join(c for c in COMMANDS if c != 'beam-1')}")
  tmp = tempfile.mkdtemp(prefix="bench_beam-")
  try:
    model = args.model or tiny_model(tmp)
    audio = os.path.join(tmp, "audio")
    write_audio(audio, args.files, args.seconds)
    walls: dict[str, list[float]] = {k: [] for k in names}
    cpus: dict[str, list[float]] = {k: [] for k in names}
    for rnd in range(args.rounds):
      for name in names:
        wall, cpu, line = run(name, model, audio, os.path.join(tmp, name),
                              args.cores_per_worker)
        walls[name].append(wall)
        cpus[name].append(cpu)
        print(f"round {rnd + 1} {name:7s} {wall:7.1f} s wall {cpu:7.1f} s CPU   {line} "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    want = rows(os.path.join(tmp, names[0]))
    windows = sum(c for _, c, _ in want[0])
    print(f"\n{args.files} files x {args.seconds:g} s, {windows} windows, model "
          f"{os.path.basename(os.path.normpath(model))}, {os.cpu_count()} cores"
          + (f", {args.cores_per_worker} pinned a worker" if args.cores_per_worker else ""))
    print(f"{'command':8s} {'best wall s':>11s} {'windows/s':>10s} {'CPU s':>7s}  "
          "rounds (wall s)  same rows")
    best = {k: min(v) for k, v in walls.items()}
    for name in names:
      got = rows(os.path.join(tmp, name))
      print(f"{name:8s} {best[name]:11.1f} {windows / best[name]:10.1f} {min(cpus[name]):7.1f}  "
            f"{' '.join(f'{w:.1f}' for w in walls[name])}  {compare(got, want)}")
    print()
    if "beam-2" in best:
      print(f"beam-2 / beam-1 windows/s: {best['beam-1'] / best['beam-2']:.2f}x (goal >= 1.7); "
            f"CPU seconds {100 * (min(cpus['beam-2']) / min(cpus['beam-1']) - 1):+.1f}%")
    if "single" in best:
      print(f"beam-1 overhead against single: {100 * (best['beam-1'] / best['single'] - 1):+.1f}%"
            f" (goal <= 10%); CPU seconds "
            f"{100 * (min(cpus['beam-1']) / min(cpus['single']) - 1):+.1f}%")
    if {"single", "beam-2"} <= set(best):
      print(f"beam-2 / single windows/s: {best['single'] / best['beam-2']:.2f}x")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
