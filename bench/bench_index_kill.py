"""`search index` SIGKILLed at random moments of a first build and of an update, then rerun.

  python bench/bench_index_kill.py [--files=1000] [--kills=10] [--seed=0] [--model=EXPORT_DIR]
                                   [--commit_files=64]

Writes --files short synthetic recordings (each a different mixture of tones and noise),
builds an uninterrupted reference index with `python -m jaxaudio.search index --ann`, then
builds the same folder again while killing the command with SIGKILL --kills times at random
moments (a seeded draw over the startup and the work still to do; in the work, by progress:
after the file the draw falls on), and a final rerun. Then it changes the folder (new,
changed and deleted files), updates the reference without interruption and the killed index
with --kills more kills and a rerun. For each phase it prints whether every file is indexed
exactly once with rows (offsets and embeddings) equal to the reference bit for bit, whether a
sample of files each find themselves first, and the work each kill lost: the files the
killed run had featurized and not committed, against the commit interval (--commit_files,
set as indexer.COMMIT_FILES in the command's process; 64 makes several commits per run here).
Without --model it trains the tests' tiny scratch model first (about a minute).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable=wrong-import-position
from jaxaudio.inference import exported  # noqa: E402
from jaxaudio.exports import stablehlo  # noqa: E402
from jaxaudio.runtime.errors import SearchIndexError  # noqa: E402
from jaxaudio.search import indexer, store  # noqa: E402
from jaxaudio.search.searcher import Searcher  # noqa: E402


def tiny_model(tmp: str) -> str:
  """The tests' tiny scratch run (tests/conftest.py `trained`), exported. Its imports (the
  trainer, TensorFlow) are left out of a run given --model."""
  from datafixtures import write_class_folder  # pylint: disable=import-outside-toplevel
  from jaxaudio.runs import configs  # pylint: disable=import-outside-toplevel
  from jaxaudio.workflows import finetune
  clips = write_class_folder(os.path.join(tmp, "clips"), per_class=10, seconds=1.5)
  cfg = configs.base_config()
  cfg.data.source, cfg.data.prepared_dir = f"folder:{clips}", os.path.join(tmp, "prepared")
  cfg.data.val_fraction, cfg.data.test_fraction = 0.2, 0.3
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  cfg.train.update(num_steps=30, eval_every=10, log_every=10, batch_size=8, warmup_steps=3,
                   probe_steps=10, learning_rate=1e-2)
  workdir = os.path.join(tmp, "run")
  finetune.run(cfg, workdir)
  return stablehlo.for_run(workdir)


def write_audio(folder: str, names: list[str], rate: int, seed: int) -> None:
  """One recording per name, 0.5-2 s: two to four random tones with random envelopes plus
  noise, so no two files embed alike."""
  rng = np.random.default_rng(seed)
  for name in names:
    n = int(rate * rng.uniform(0.5, 2.0))
    t = np.arange(n) / rate
    x = 0.02 * rng.uniform(0.2, 1.0) * rng.standard_normal(n)
    for _ in range(rng.integers(2, 5)):
      env = np.clip(np.sin(np.pi * (t / t[-1] * rng.uniform(0.5, 3) + rng.uniform())), 0, 1)
      x += rng.uniform(0.05, 0.3) * env * np.sin(2 * np.pi * rng.uniform(80, 6000) * t)
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x.astype(np.float32), rate)


# `python -m jaxaudio.search` with indexer.COMMIT_FILES set first (the CLI has no flag for it)
# and a line appended to a file for every file it has featurized (written at once, so it
# survives SIGKILL): what a kill loses is that count less what the run committed.
_CLI = """
import runpy, sys
from jaxaudio.search import indexer
indexer.COMMIT_FILES = int(sys.argv.pop(1))
ticks = open(sys.argv.pop(1), "a", buffering=1)
add = indexer._Tally.add
def counted(self, size, res):
  add(self, size, res)
  ticks.write("\\n")
indexer._Tally.add = counted
runpy.run_module("jaxaudio.search", run_name="__main__", alter_sys=True)
"""


def command(model: str, audio: str, commit_files: int):
  """(index, ticks file) -> the argv of `search index --ann` of `audio` into it."""
  return lambda index, ticks=os.devnull: [
      sys.executable, "-c", _CLI, str(commit_files), ticks, "index", f"--model={model}",
      f"--audio={audio}", f"--index={index}", "--ann"]


def watch(proc, manifest: str, start: float, until: float) -> tuple[list[float], bool]:
  """Poll `proc` until it exits or the clock reaches `until`: (the seconds after `start` at
  which its commits landed, seen as changes of the manifest's mtime; whether it exited)."""
  commits, seen = [], start
  while time.time() < until:
    if proc.poll() is not None:
      return commits, True
    mtime = os.path.getmtime(manifest) if os.path.exists(manifest) else 0.0
    if mtime > seen:
      commits.append(mtime - start)
      seen = mtime
    time.sleep(0.02)
  return commits, proc.poll() is not None


def run_whole(cmd, index: str) -> tuple[float, list[float]]:
  """One uninterrupted run: (wall seconds, the seconds after its start of its commits)."""
  start = time.time()
  proc = subprocess.Popen(cmd(index), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  commits, _ = watch(proc, os.path.join(index, store.MANIFEST), start, float("inf"))
  out, err = proc.communicate()
  if proc.returncode or f"index {index}: " not in out:
    raise SystemExit(f"search index failed (exit {proc.returncode}):\n{out[-2000:]}\n"
                     f"{err[-3000:]}")
  return time.time() - start, commits


def pace(commits: list[float], commit_files: int) -> tuple[float, float]:
  """(seconds from a run's start until it embeds, seconds per commit interval) from a whole
  run's commit times: the intermediate commits are one interval apart."""
  gaps = np.diff(commits[:-1]) if len(commits) > 2 else np.array([commits[0] / 2])
  interval = float(np.median(gaps))
  return max(commits[0] - interval, 0.0), interval


def committed(index: str) -> tuple[int, float, bool]:
  """(files whose committed rows are of the file as it is now on disk, the manifest's mtime,
  whether the manifest is a finished one); (0, 0, False) before the first commit."""
  try:
    m = store.read_manifest(index)
  except SearchIndexError:
    return 0, 0.0, False
  current = 0
  for e in m.files:
    if os.path.exists(e.path):
      st = os.stat(e.path)
      current += (st.st_size, st.st_mtime_ns) == (e.size, e.mtime_ns)
  return current, os.path.getmtime(os.path.join(index, store.MANIFEST)), m.unfinished is None


def kill_runs(cmd, index, kills, rng, startup, seconds_left, total, commit_files):
  """Runs of the command SIGKILLed at a random moment, until `kills` of them were killed
  while running (a run that finished first is listed and not counted) or nothing is left to
  do: one row per run. The moment is drawn uniformly over the startup and the work
  `seconds_left(files up to date)` estimates; in the work it is placed by progress (after
  the file the draw falls on is featurized, so a slower machine cannot outrun it) rather
  than by the clock. The work a kill lost: the files the run had featurized and not
  committed, also in commit intervals."""
  rows = []
  ticks = os.path.join(os.path.dirname(index), "ticks")
  while sum(not r["finished"] for r in rows) < kills and len(rows) < 3 * kills:
    before, _, complete = committed(index)
    if complete and before == total:
      break
    left = seconds_left(before)
    draw = rng.uniform(0, startup + left)
    target = None if draw < startup else int((draw - startup) / left * (total - before)) + 1
    open(ticks, "w").close()
    start = time.time()
    proc = subprocess.Popen(cmd(index, ticks), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and (time.time() - start < draw if target is None
                                   else os.path.getsize(ticks) < target):
      time.sleep(0.005)
    finished = proc.poll() is not None
    if not finished:
      os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at = time.time() - start
    after, _, complete = committed(index)
    featurized = os.path.getsize(ticks)
    lost = 0 if finished else featurized - (after - before)
    rows.append({"at": at, "finished": finished, "before": before, "after": after,
                 "lost": lost, "intervals": lost / commit_files, "complete": complete,
                 "phase": "startup" if target is None else f"file {target}"})
  return rows


def compare(index: str, reference: str, sample: int, rng) -> dict[str, object]:
  m, ref = store.read_manifest(index), store.read_manifest(reference)
  paths = [e.path for e in m.files]
  once = len(paths) == len(set(paths)) and set(paths) == {e.path for e in ref.files}
  a, b = store.load_rows(index, m), store.load_rows(reference, ref)
  equal = once
  if once:
    pos = {e.path: i for i, e in enumerate(b.files)}
    for i, e in enumerate(a.files):
      mine, theirs = a.file_of_row == i, b.file_of_row == pos[e.path]
      equal = (equal and np.array_equal(a.offsets[mine], b.offsets[theirs])
               and np.array_equal(a.embeddings[mine], b.embeddings[theirs]))
  searcher = Searcher(index)
  picks = rng.choice(len(paths), size=min(sample, len(paths)), replace=False)
  first = sum(searcher.search([searcher.embed_audio(paths[i])], k=1)[0][0].file == paths[i]
              for i in picks)
  return {"once": once, "equal": equal, "first": first, "sample": len(picks),
          "files": len(paths), "ann": (m.ann or {}).get("last_update")}


def report(phase: str, rows, result, interval_s: float, commit_files: int) -> None:
  print(f"\n{phase}: {sum(not r['finished'] for r in rows)} kills")
  print(" run  killed at s  when        files up to date before -> after   "
        "work lost: files  intervals")
  for i, r in enumerate(rows, 1):
    when = "finished" if r["finished"] else r["phase"]
    print(f"  {i:2d}  {r['at']:11.1f}  {when:10s}  {r['before']:6d} -> {r['after']:6d}"
          f"{' (complete)' if r['complete'] else '':11s}    {r['lost']:6d}  "
          f"{r['intervals']:9.2f}")
  lost = [r for r in rows if not r["finished"]]
  print(f"every file indexed exactly once: {'yes' if result['once'] else 'no'} "
        f"({result['files']} files); rows equal to the uninterrupted build bit for bit: "
        f"{'yes' if result['equal'] else 'no'}; approximate index: {result['ann']}")
  print(f"queries return each file first: {result['first']}/{result['sample']} sampled files")
  if lost:
    print(f"work lost per kill: mean {np.mean([r['lost'] for r in lost]):.1f} files, max "
          f"{max(r['lost'] for r in lost)}; the commit interval is {commit_files} files "
          f"({interval_s:.1f} s on the uninterrupted run): mean "
          f"{np.mean([r['intervals'] for r in lost]):.2f}, max "
          f"{max(r['intervals'] for r in lost):.2f} intervals")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--files", type=int, default=1000)
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sample", type=int, default=50, help="files queried per phase")
  parser.add_argument("--model", help="an exported model (default: train the tiny one)")
  parser.add_argument("--commit_files", type=int, default=64,
                      help=f"files per commit (search index: {indexer.COMMIT_FILES})")
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  tmp = tempfile.mkdtemp(prefix="bench-index-kill-")
  model = args.model or tiny_model(tmp)
  rate = int(exported.load(model).meta["frontend"]["sample_rate"])
  audio, ref, index = (os.path.join(tmp, n) for n in ("audio", "reference", "killed"))
  names = [f"d{i % 10}/f{i:05d}.wav" for i in range(args.files)]
  write_audio(audio, names, rate, args.seed)

  cmd = command(model, audio, args.commit_files)
  wall, commits = run_whole(cmd, ref)
  startup, interval = pace(commits, args.commit_files)
  print(f"{args.files} files, a commit every {args.commit_files} files or "
        f"{indexer.COMMIT_SECONDS:.0f} s; uninterrupted first build {wall:.1f} s: embedding "
        f"starts {startup:.1f} s in (imports, model load, compilation), then a commit every "
        f"{interval:.1f} s ({args.commit_files / interval:.0f} files/s)")
  rows = kill_runs(cmd, index, args.kills, rng, startup,
                   lambda done: (args.files - done) / args.commit_files * interval, args.files,
                   args.commit_files)
  run_whole(cmd, index)
  report("first build", rows, compare(index, ref, args.sample, rng), interval, args.commit_files)

  order = rng.permutation(args.files)
  changed = [names[i] for i in order[:args.files // 4]]
  deleted = [names[i] for i in order[args.files // 4:args.files // 4 + args.files // 10]]
  new = [f"n{i % 10}/g{i:05d}.wav" for i in range(args.files // 2)]
  write_audio(audio, changed, rate, args.seed + 1)
  write_audio(audio, new, rate, args.seed + 2)
  for name in deleted:
    os.remove(os.path.join(audio, name))
  wall, commits = run_whole(cmd, ref)
  startup, interval = pace(commits, args.commit_files)
  print(f"\nupdate: {len(new)} new, {len(changed)} changed, {len(deleted)} deleted files; "
        f"uninterrupted update {wall:.1f} s: embedding starts {startup:.1f} s in, then a "
        f"commit every {interval:.1f} s")
  total = args.files + len(new) - len(deleted)
  rows = kill_runs(cmd, index, args.kills, rng, startup,
                   lambda done: (total - done) / args.commit_files * interval, total,
                   args.commit_files)
  run_whole(cmd, index)
  report("update", rows, compare(index, ref, args.sample, rng), interval, args.commit_files)
  print(f"\n(folders under {tmp})")


if __name__ == "__main__":
  main()
