"""Make an unlabelled archive with known ground truth for bench/agile.py (dev tooling).

Long recordings at several sites: a site's background (pink or brown noise at its own level,
mains hum at 50 or 60 Hz with harmonics, sox `pluck` notes now and then), and spoken words by
espeak-ng at random moments. Three words are the targets (`yes`, `stop`, `seven`); ten others
are distractors. Each site has its own voice variants (no speaker is heard at two sites), its
own reverb and band limit, so recordings of one site share what sets them apart: a real shift
for "group = site". Ground truth goes to events.csv (path, start, end, label, site) for every
spoken word, targets and distractors alike.

  python bench/make_agile_archive.py --out=/tmp/agile --sites=4 --recordings=6 --minutes=6

Needs espeak-ng and sox on PATH (Debian: apt-get install espeak-ng sox).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from make_speech_dataset import ACCENTS, colored_noise, require_tools, variants

SR = 16000
TARGETS = ("yes", "stop", "seven")
DISTRACTORS = ("no", "go", "up", "down", "left", "right", "on", "off", "three", "eleven")
NOTES = ("C3", "E3", "G3", "A3", "C4", "E4", "G4", "B4", "D5")


def _sox(args: list[str]) -> None:
  subprocess.run(["sox"] + args, check=True, capture_output=True)


def _word(word: str, voice: str, site: dict, rng: np.random.Generator, tmp: str) -> np.ndarray:
  raw, fx = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "fx.wav")
  subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(130, 210))),
                  "-p", str(int(rng.integers(25, 75))), "-w", raw, word], check=True,
                 capture_output=True)
  _sox([raw, "-c", "1", fx, "rate", str(SR), "reverb", str(site["reverb"]), "50",
        str(site["room"]), "sinc", site["band"]])
  x, _ = sf.read(fx, dtype="float64")
  x = x if x.ndim == 1 else x.mean(axis=1)
  nz = np.flatnonzero(np.abs(x) > 0.02 * np.max(np.abs(x)))   # trim espeak's silence
  return x[nz[0]:nz[-1] + 1] if len(nz) else x


def _note(rng: np.random.Generator, tmp: str) -> np.ndarray:
  path = os.path.join(tmp, "note.wav")
  _sox(["-n", "-r", str(SR), "-c", "1", path, "synth", f"{rng.uniform(0.4, 1.5):.2f}",
        "pluck", str(rng.choice(NOTES)), "fade", "0", "0", "0.2"])
  x, _ = sf.read(path, dtype="float64")
  return x


def _recording(site: dict, seconds: float, rng: np.random.Generator, tmp: str
               ) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
  n = int(seconds * SR)
  t = np.arange(n) / SR
  x = site["noise"] * colored_noise(rng, n, site["exponent"])
  for h in (1, 2, 3):
    x += site["hum"] / h * np.sin(2 * np.pi * site["mains"] * h * t + rng.uniform(0, 6.3))
  events = []
  pos = rng.uniform(1.0, 6.0)
  while pos < seconds - 3.0:
    kind = rng.random()
    if kind < 0.12:                       # a note, not an event anyone labels
      y = _note(rng, tmp) * rng.uniform(0.05, 0.3)
      label = None
    else:
      word = (rng.choice(TARGETS) if kind < 0.45 else rng.choice(DISTRACTORS))
      y = _word(str(word), str(rng.choice(site["voices"])), site, rng, tmp)
      y = y / (np.max(np.abs(y)) + 1e-12) * rng.uniform(0.15, 0.6)
      label = str(word)
    i = int(pos * SR)
    y = y[: n - i]
    x[i:i + len(y)] += y
    if label:
      events.append((i / SR, (i + len(y)) / SR, label))
    pos += len(y) / SR + rng.exponential(site["gap"]) + 0.3
  return (0.9 * x / np.max(np.abs(x))).astype(np.float32), events


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--sites", type=int, default=4)
  parser.add_argument("--recordings", type=int, default=6, help="per site")
  parser.add_argument("--minutes", type=float, default=6.0, help="per recording")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  require_tools()
  rng = np.random.default_rng(args.seed)
  pool = list(rng.permutation(variants()))
  per_site = max(2, len(pool) // args.sites)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for s in range(args.sites):
      voices = [f"{ACCENTS[int(rng.integers(len(ACCENTS)))]}+{v}"
                for v in pool[s * per_site:(s + 1) * per_site]]
      site = {"voices": voices, "exponent": 1.0 if s % 2 == 0 else 2.0,
              "noise": rng.uniform(0.01, 0.05), "hum": rng.uniform(0.003, 0.02),
              "mains": 50.0 if s % 2 else 60.0, "reverb": int(rng.integers(10, 80)),
              "room": int(rng.integers(20, 100)),
              "band": f"{int(rng.integers(60, 300))}-{int(rng.integers(3500, 7500))}",
              "gap": rng.uniform(2.0, 5.0)}
      folder = os.path.join(args.out, f"site{s}")
      os.makedirs(folder, exist_ok=True)
      for r in range(args.recordings):
        x, events = _recording(site, args.minutes * 60.0, rng, tmp)
        path = os.path.join(folder, f"rec{r:02d}.wav")
        sf.write(path, x, SR, subtype="PCM_16")
        rows += [(os.path.abspath(path), f"{a:.3f}", f"{b:.3f}", label, f"site{s}")
                 for a, b, label in events]
        print(f"site{s}/rec{r:02d}.wav: {len(events)} words", flush=True)
  with open(os.path.join(args.out, "events.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "start", "end", "label", "site"])
    w.writerows(rows)
  hours = args.sites * args.recordings * args.minutes / 60
  targets = {c: sum(r[3] == c for r in rows) for c in TARGETS}
  print(f"wrote {args.sites * args.recordings} recordings ({hours:.1f} h) and events.csv: "
        f"targets {targets}, {sum(r[3] in DISTRACTORS for r in rows)} distractor words")


if __name__ == "__main__":
  main()
