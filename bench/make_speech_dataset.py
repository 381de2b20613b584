"""Make a real-audio keyword dataset with espeak-ng and sox (dev tooling, not a runtime need).

Ten Speech Commands words (yes no up down left right on off stop go) spoken by espeak-ng's
English voices crossed with its voice variants, at random speed and pitch, placed at a
random offset in a 2 s clip, some with sox reverb and a random band limit, mixed with pink
or brown noise at 5-30 dB SNR. Splits are speaker-disjoint: the validation and test splits
use voice variants never heard in training, so the figures measure generalisation to new
voices rather than memorised ones.

  python bench/make_speech_dataset.py --out=/tmp/speech   # then data.source=folder:/tmp/speech
  python bench/make_speech_dataset.py --out=/tmp/speech-cv --folds=5 --per_class=70
      # <word>/*.wav and folds.csv (path,label,fold): voice variants split into 5 disjoint
      # groups, for data.source=csv:/tmp/speech-cv/folds.csv and evaluate --folds=5

Needs `espeak-ng` and `sox` on PATH (Debian: apt-get install espeak-ng sox).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
SR = 22050
SECONDS = 2.0


def require_tools(tools=("espeak-ng", "sox")) -> None:
  """Stop with one sentence when a synthesis tool is missing."""
  for tool in tools:
    if shutil.which(tool) is None:
      raise SystemExit(f"error: {tool} is not on PATH; install it (apt-get install {tool}).")


def variants() -> list[str]:
  out = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True,
                       text=True).stdout.splitlines()[1:]
  return sorted({line.split()[4].rsplit("/", 1)[-1] for line in out if line.strip()})


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
  """Noise with power ~ 1/f**exponent (1 = pink, 2 = brown), unit RMS."""
  spec = np.fft.rfft(rng.standard_normal(n))
  f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
  x = np.fft.irfft(spec / f ** (exponent / 2.0), n)
  return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def speak(word: str, voice: str, rng: np.random.Generator, tmp: str) -> np.ndarray:
  raw, fx = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "fx.wav")
  subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(120, 220))),
                  "-p", str(int(rng.integers(20, 80))), "-w", raw, word], check=True,
                 capture_output=True)
  effects = ["rate", str(SR)]
  if rng.random() < 0.5:
    effects += ["reverb", str(int(rng.integers(20, 70))), "50", str(int(rng.integers(30, 90)))]
  if rng.random() < 0.5:
    effects += ["sinc", f"{int(rng.integers(80, 300))}-{int(rng.integers(3500, 9000))}"]
  subprocess.run(["sox", raw, "-c", "1", fx] + effects, check=True, capture_output=True)
  x, _ = sf.read(fx, dtype="float64")
  return x if x.ndim == 1 else x.mean(axis=1)


def clip(word: str, voice: str, rng: np.random.Generator, tmp: str) -> np.ndarray:
  n = int(SECONDS * SR)
  speech = speak(word, voice, rng, tmp)[:n]
  out = np.zeros(n)
  start = int(rng.integers(0, n - len(speech) + 1))
  out[start:start + len(speech)] = speech
  out /= np.max(np.abs(out)) + 1e-12
  snr_db = rng.uniform(5.0, 30.0)
  speech_rms = np.sqrt(np.mean(speech ** 2)) / (np.max(np.abs(speech)) + 1e-12)
  noise = colored_noise(rng, n, 1.0 if rng.random() < 0.5 else 2.0)
  out += noise * speech_rms * 10.0 ** (-snr_db / 20.0)
  return 0.9 * out / np.max(np.abs(out)) * 10.0 ** (-rng.uniform(0.0, 12.0) / 20.0)


def write_folds(args, rng: np.random.Generator, pool: list[str]) -> None:
  """<word>/<word>_NNN.wav and folds.csv; clip i of a word is in fold i % K, spoken by one of
  that fold's voice variants (no variant in two folds)."""
  groups = [pool[k::args.folds] for k in range(args.folds)]
  per_class = int(args.per_class)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for word in WORDS:
      os.makedirs(os.path.join(args.out, word), exist_ok=True)
      for i in range(per_class):
        fold = i % args.folds
        voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{groups[fold][rng.integers(len(groups[fold]))]}"
        name = os.path.join(word, f"{word}_{i:03d}.wav")
        sf.write(os.path.join(args.out, name), clip(word, voice, rng, tmp), SR, subtype="PCM_16")
        rows.append(f"{name},{word},{fold + 1}")
  with open(os.path.join(args.out, "folds.csv"), "w") as f:
    f.write("path,label,fold\n" + "\n".join(rows) + "\n")
  print(f"wrote {len(rows)} clips and folds.csv to {args.out} ({args.folds} speaker-disjoint "
        f"folds of {[len(g) for g in groups]} voice variants)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--per_class", default="40,10,20",
                      help="clips per word in train,validation,test")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--folds", type=int, default=0,
                      help="K > 0: speaker-disjoint folds in folds.csv instead of split folders; "
                           "--per_class is then one number, clips per word in all")
  args = parser.parse_args()
  require_tools()
  rng = np.random.default_rng(args.seed)
  pool = list(rng.permutation(variants()))
  if args.folds:
    write_folds(args, rng, pool)
    return
  held = {"test": pool[:16], "validation": pool[16:26], "train": pool[26:]}
  counts = dict(zip(("train", "validation", "test"), map(int, args.per_class.split(","))))
  with tempfile.TemporaryDirectory() as tmp:
    for split, per_class in counts.items():
      for word in WORDS:
        folder = os.path.join(args.out, split, word)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
          voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{held[split][rng.integers(len(held[split]))]}"
          sf.write(os.path.join(folder, f"{word}_{i:03d}.wav"), clip(word, voice, rng, tmp), SR,
                   subtype="PCM_16")
  print(f"wrote {sum(counts.values()) * len(WORDS)} clips to {args.out} "
        f"(speaker-disjoint: {len(held['train'])} train / {len(held['validation'])} validation / "
        f"{len(held['test'])} test voice variants)")


if __name__ == "__main__":
  main()
