"""Live streaming against the file path: a recording piped at real-time speed into
`python -m jaxaudio.predict --stream` finds the events `predict --windows` finds on the file,
once each, and says how late each one came and how much of a core the stream used.

  python bench/bench_stream.py --model=RUN/export/step_N --audio=a.wav,b.wav --seconds=600

The recordings are joined (resampled to the model's rate) and cut to --seconds, peak-normalised to the model's loudness
target (what featurize does to a file, so --stream_loudness=none sees the offline samples),
written as float32 and sent as f32le in 0.1 s blocks, each at its real time. Printed: the
offline events, the streamed ones (matched by label, start and end to the millisecond), the
latency of each (wall time its line arrived minus the wall time its end was sent),
percentiles, and the stream's CPU seconds per second of audio (the process's utime + stime
after the model loaded, from /proc/PID/stat and wait4), whose inverse is how many real-time streams one core serves. A second,
faster-than-real-time pass with --stream_loudness=running shows what the running
normalisation changes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf
import soxr

BLOCK_SECONDS = 0.1


def _cpu_seconds(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _stream(model: str, x: np.ndarray, rate: int, out: str, loudness: str, real_time: bool,
            threshold: str):
  cmd = [sys.executable, "-m", "jaxaudio.predict", "--stream", f"--model={model}",
         "--stream_format=f32le", f"--stream_rate={rate}", f"--stream_loudness={loudness}",
         f"--threshold={threshold}", f"--out={out}"]
  proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  arrivals: list[tuple[float, list[str]]] = []

  def read():
    for line in proc.stdout:
      arrivals.append((time.monotonic(), next(csv.reader([line.decode()]))))

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  time.sleep(8.0 if real_time else 0.0)   # the model loads and compiles before audio comes
  step = int(rate * BLOCK_SECONDS)
  t0 = time.monotonic()
  cpu0 = _cpu_seconds(proc.pid)
  for i in range(0, len(x), step):
    if real_time:
      lag = t0 + i / rate - time.monotonic()
      if lag > 0:
        time.sleep(lag)
    proc.stdin.write(x[i:i + step].astype("<f4").tobytes())
    proc.stdin.flush()
  sent = time.monotonic()
  proc.stdin.close()
  _, status, usage = os.wait4(proc.pid, 0)   # the whole run's CPU, backlog included
  proc.returncode = os.waitstatus_to_exitcode(status)
  cpu = usage.ru_utime + usage.ru_stime - cpu0
  reader.join()
  if proc.returncode:
    raise SystemExit(proc.stderr.read().decode()[-3000:])
  return t0, sent - t0, cpu, arrivals[1:]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", required=True, help="an exported model folder")
  ap.add_argument("--audio", required=True, help="comma-separated recordings, joined")
  ap.add_argument("--seconds", type=float, default=600.0)
  ap.add_argument("--threshold", default="0.5")
  args = ap.parse_args()
  with open(os.path.join(args.model, "meta.json")) as f:
    meta = json.load(f)
  rate = int(meta["frontend"]["sample_rate"])
  target_db = float(meta.get("settings", {}).get("loudness_db", -1.0))
  parts = []
  for path in args.audio.split(","):
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    parts.append(y if sr == rate else soxr.resample(y, sr, rate, quality="HQ"))
  x = np.concatenate(parts)[:int(args.seconds * rate)]
  x = (x * (10 ** (target_db / 20) / np.max(np.abs(x)))).astype(np.float32)
  work = tempfile.mkdtemp(prefix="bench_stream-")
  wav = os.path.join(work, "recording.wav")
  sf.write(wav, x, rate, subtype="FLOAT")
  r = subprocess.run([sys.executable, "-m", "jaxaudio.predict", f"--model={args.model}",
                      f"--audio={wav}", f"--out={work}/off.csv", "--windows",
                      f"--threshold={args.threshold}"], capture_output=True, text=True)
  if r.returncode:
    raise SystemExit(r.stderr[-3000:])
  offline = _read_csv(f"{work}/off.events.csv")
  key = lambda e: (e["label"], e["start"], e["end"])  # noqa: E731

  t0, wall, cpu, arrivals = _stream(args.model, x, rate, f"{work}/live.csv", "none", True,
                                    args.threshold)
  streamed = _read_csv(f"{work}/live.csv")
  latency = [t - (t0 + float(row[2])) for t, row in arrivals]
  same = sorted(map(key, streamed)) == sorted(map(key, offline))
  window = float(meta["frontend"]["frames_per_window"]) * meta["frontend"]["hop_length"] / rate
  print(json.dumps({
      "audio_seconds": round(len(x) / rate, 1), "offline_events": len(offline),
      "streamed_events": len(streamed), "same_events": same,
      "duplicates": len(streamed) - len(set(map(key, streamed))),
      "missing": len(set(map(key, offline)) - set(map(key, streamed))),
      "latency_s": {q: round(float(np.percentile(latency, q)), 3) for q in (0, 50, 95, 100)}
      if latency else None, "window_s": round(window, 3),
      "sent_over_s": round(wall, 1), "cpu_s_per_audio_s": round(cpu / (len(x) / rate), 4),
      "real_time_streams_per_core": round((len(x) / rate) / max(cpu, 1e-9), 1)}, indent=1))
  _, _, _, _ = _stream(args.model, x, rate, f"{work}/running.csv", "running", False,
                       args.threshold)
  running = _read_csv(f"{work}/running.csv")
  found = set(map(key, offline)) & set(map(key, running))
  print(json.dumps({"running_loudness": {"events": len(running), "exactly_as_offline": len(found),
                                         "offline": len(offline)}}))
  print(f"files in {work}")


if __name__ == "__main__":
  main()
