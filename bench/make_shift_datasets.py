"""Make four real-audio data sets whose test split differs from training (dev tooling).

Each data set is `OUT/<name>/{train,test}/<class>/<class>__<group>__<n>.wav` plus
`OUT/<name>/dataset.json`. The group (speaker, instrument, room, noise type) is in the file
name, so the trainer carves validation group-disjoint from train with
`--config.data.group='regex:__([^_]+)__'`: validation then mirrors the test shift.

  speakers     ten keywords (espeak-ng); test voices never heard in training
  instruments  16 General MIDI families sampled by FluidR3 (fluidsynth); test programs
               (instruments) never heard in training -- the shift of issue 10's table
  rooms        8 GM sound effects + 8 GM drum sounds (FluidR3 and TimGM6mb samples) played
               in rooms and through microphones; test rooms/microphones never in training
  noise        keyword spotting, imbalanced: 4 common keywords, 2 ten times rarer, a large
               "background" class (other words, noise alone); test noise types (babble,
               rain, engine, clicks) never in training, at lower SNR

  python bench/make_shift_datasets.py --out=/tmp/shift [--only=instruments,rooms]

Needs espeak-ng, sox, fluidsynth and the fluid-soundfont-gm and timgm6mb-soundfont
packages (Debian).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from make_speech_dataset import ACCENTS, WORDS, clip, colored_noise, speak, variants

SR = 22050
SECONDS = 2.0
GROUP_REGEX = "regex:__([^_]+)__"
SOUNDFONTS = {"fluid": "/usr/share/sounds/sf2/FluidR3_GM.sf2",
              "tim": "/usr/share/sounds/sf2/TimGM6mb.sf2"}
FAMILIES = ("piano", "chromatic_percussion", "organ", "guitar", "bass", "strings", "ensemble",
            "brass", "reed", "pipe", "synth_lead", "synth_pad", "synth_effects", "ethnic",
            "percussive", "sound_effects")
SFX = {"fret_noise": 120, "breath": 121, "seashore": 122, "bird": 123, "telephone": 124,
       "helicopter": 125, "applause": 126, "gunshot": 127}
DRUMS = {"kick": 36, "snare": 38, "clap": 39, "closed_hat": 42, "tambourine": 54,
         "cowbell": 56, "crash": 49, "triangle": 81}
DRUM_KITS = (0, 8, 16, 24, 32, 40)     # standard, room, power, electronic, jazz, brush


def _vlq(n: int) -> bytes:
  out = [n & 0x7F]
  n >>= 7
  while n:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  return bytes(reversed(out))


def midi_file(program: int, notes, channel: int = 0, bank: int = 0, gap: float = 3.0) -> bytes:
  """A format-0 MIDI file: `notes` = [(pitch, velocity, seconds)], one every `gap` seconds
  (120 bpm, 480 ticks per beat = 960 ticks per second)."""
  ev = _vlq(0) + bytes([0xFF, 0x51, 3]) + (500000).to_bytes(3, "big")
  ev += _vlq(0) + bytes([0xB0 | channel, 0, bank]) + _vlq(0) + bytes([0xC0 | channel, program])
  for pitch, velocity, dur in notes:
    on, off = int(dur * 960), int((gap - dur) * 960)
    ev += _vlq(0) + bytes([0x90 | channel, pitch, velocity])
    ev += _vlq(on) + bytes([0x80 | channel, pitch, 0]) + _vlq(off) + bytes([0xB0 | channel, 123, 0])
  ev += _vlq(960) + bytes([0xFF, 0x2F, 0])
  return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(ev)) + ev


def render(notes, program: int, soundfont: str, tmp: str, channel: int = 0, bank: int = 0,
           gap: float = 3.0) -> list[np.ndarray]:
  """Each note rendered by fluidsynth and cut into its own `gap`-second mono segment."""
  mid, wav = os.path.join(tmp, "n.mid"), os.path.join(tmp, "n.wav")
  with open(mid, "wb") as f:
    f.write(midi_file(program, notes, channel, bank, gap))
  subprocess.run(["fluidsynth", "-ni", "-g", "0.6", "-r", str(SR), "-F", wav,
                  SOUNDFONTS[soundfont], mid], check=True, capture_output=True)
  x, _ = sf.read(wav, dtype="float64")
  x = x.mean(axis=1) if x.ndim == 2 else x
  step = int(gap * SR)
  return [np.pad(x[i * step:(i + 1) * step], (0, max(0, (i + 1) * step - len(x))))
          for i in range(len(notes))]


def place(sound: np.ndarray, rng: np.random.Generator, lead: float = 0.3) -> np.ndarray:
  """A 2 s clip of `sound` (trimmed of leading silence) starting at a random offset."""
  n = int(SECONDS * SR)
  loud = np.flatnonzero(np.abs(sound) > 1e-3 * (np.abs(sound).max() + 1e-12))
  sound = sound[loud[0]:] if len(loud) else sound
  out = np.zeros(n)
  start = int(rng.uniform(0.0, lead) * SR)
  seg = sound[:n - start]
  out[start:start + len(seg)] = seg
  return out


def mix(signal: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
  active = signal[np.abs(signal) > 0.05 * (np.abs(signal).max() + 1e-12)]
  rms = np.sqrt(np.mean(active ** 2)) if len(active) else 1e-3
  noise = noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)
  out = signal + noise * rms * 10.0 ** (-snr_db / 20.0)
  return 0.9 * out / (np.abs(out).max() + 1e-12) * 10.0 ** (-rng.uniform(0.0, 12.0) / 20.0)


def sox(x: np.ndarray, effects: list[str], tmp: str) -> np.ndarray:
  a, b = os.path.join(tmp, "a.wav"), os.path.join(tmp, "b.wav")
  sf.write(a, x / (np.abs(x).max() + 1e-9) * 0.5, SR, subtype="FLOAT")
  subprocess.run(["sox", a, b] + effects, check=True, capture_output=True)
  y, _ = sf.read(b, dtype="float64")
  y = y.mean(axis=1) if y.ndim == 2 else y
  return np.pad(y, (0, max(0, len(x) - len(y))))[:len(x)]


class Writer:
  """Writes clips as <split>/<class>/<class>__<group>__<n>.wav and counts them."""

  def __init__(self, root: str):
    self.root, self.counts = root, {}

  def __call__(self, split: str, label: str, group: str, x: np.ndarray) -> None:
    n = self.counts.get((split, label), 0)
    self.counts[(split, label)] = n + 1
    folder = os.path.join(self.root, split, label)
    os.makedirs(folder, exist_ok=True)
    sf.write(os.path.join(folder, f"{label}__{group}__{n:04d}.wav"), x.astype(np.float32), SR,
             subtype="PCM_16")

  def summary(self) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(self.counts.items()):
      out.setdefault(split, {})[label] = n
    return out


def speakers(out: str, rng: np.random.Generator, tmp: str, scale: float) -> str:
  pool = list(rng.permutation(variants()))
  held = {"test": pool[:20], "train": pool[20:]}
  write = Writer(out)
  for split, per_word in (("train", int(48 * scale)), ("test", int(20 * scale))):
    for word in WORDS:
      for _ in range(per_word):
        variant = held[split][rng.integers(len(held[split]))]
        voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{variant}"
        write(split, word, variant.lower().replace("_", "-"), clip(word, voice, rng, tmp))
  _meta(out, write, "speakers", "unseen speakers: espeak-ng voice variants of the test split "
        "never occur in train", "voice variant")
  return out


def instruments(out: str, rng: np.random.Generator, tmp: str, scale: float) -> str:
  write = Writer(out)
  per_train, per_test = max(2, int(6 * scale)), max(2, int(8 * scale))
  for f, family in enumerate(FAMILIES):
    programs = [8 * f + p for p in rng.permutation(8)]
    for split, chosen, count in (("test", programs[:2], per_test),
                                 ("train", programs[2:], per_train)):
      for program in chosen:
        low, high = (28, 55) if family == "bass" else (48, 84)
        notes = [(int(rng.integers(low, high)), int(rng.integers(60, 127)),
                  float(rng.uniform(0.4, 1.6))) for _ in range(count)]
        for sound in render(notes, program, "fluid", tmp):
          x = mix(place(sound, rng), colored_noise(rng, int(SECONDS * SR), 1.0),
                  rng.uniform(25.0, 45.0), rng)
          write(split, family, f"p{program:03d}", x)
  _meta(out, write, "instruments", "unseen sources: 2 of the 8 General MIDI programs of each "
        "family are heard only in test", "GM program")
  return out


def _rooms(rng: np.random.Generator) -> dict[str, list[str]]:
  """sox effect chains: 6 training rooms/microphones and 4 others for the test."""
  rooms = {}
  for i in range(10):
    test = i >= 6
    reverb = ["reverb", str(int(rng.uniform(60, 100) if test else rng.uniform(10, 55))),
              str(int(rng.uniform(20, 80))), str(int(rng.uniform(60, 100) if test else
                                                     rng.uniform(20, 70))),
              "100", str(int(rng.uniform(5, 60))), str(int(rng.uniform(-4, 2) if test else
                                                             rng.uniform(-8, -2)))]
    low = int(rng.uniform(150, 500) if test else rng.uniform(30, 120))
    high = int(rng.uniform(3000, 6000) if test else rng.uniform(8000, 10500))
    eq = ["equalizer", str(int(rng.uniform(400, 3000))), "1.0q", f"{rng.uniform(-9, 9):.1f}"]
    rooms[f"room{i}" + ("t" if test else "")] = reverb + ["sinc", f"{low}-{high}"] + eq
  return rooms


def rooms(out: str, rng: np.random.Generator, tmp: str, scale: float) -> str:
  write = Writer(out)
  chains = _rooms(rng)
  train_rooms = [r for r in chains if not r.endswith("t")]
  test_rooms = [r for r in chains if r.endswith("t")]
  per_class = {"train": max(6, int(48 * scale)), "test": max(4, int(20 * scale))}
  sounds: dict[str, list[np.ndarray]] = {}
  for name, program in SFX.items():
    for font in SOUNDFONTS:
      notes = [(int(rng.integers(55, 72)), int(rng.integers(70, 127)),
                float(rng.uniform(0.5, 1.6))) for _ in range(sum(per_class.values()) // 2 + 1)]
      sounds.setdefault(name, []).extend(render(notes, program, font, tmp))
  for name, key in DRUMS.items():
    for font in SOUNDFONTS:
      for kit in DRUM_KITS if font == "fluid" else (0,):
        notes = [(key, int(rng.integers(50, 127)), 0.5) for _ in range(12)]
        sounds.setdefault(name, []).extend(render(notes, kit, font, tmp, channel=9,
                                                  bank=128 if kit else 0))
  for label, pool in sounds.items():
    order = rng.permutation(len(pool))
    for split, count in per_class.items():
      for k in range(count):
        dry = place(pool[order[(k + (0 if split == "train" else per_class["train"])) % len(pool)]],
                    rng)
        if label in DRUMS and rng.random() < 0.5:   # a second hit, as drums are played
          dry += np.roll(dry, int(rng.uniform(0.25, 0.8) * SR)) * rng.uniform(0.4, 1.0)
        room = (train_rooms if split == "train" else test_rooms)[rng.integers(
            len(train_rooms) if split == "train" else len(test_rooms))]
        wet = sox(dry, chains[room], tmp)
        write(split, label, room, mix(wet, colored_noise(rng, len(wet), 1.5),
                                      rng.uniform(20.0, 40.0), rng))
  _meta(out, write, "rooms", "unseen rooms and microphones: test clips pass through 4 rooms "
        "(more reverberant, narrower and other-coloured microphones) never used in train",
        "room", chains=chains)
  return out


def _noise(kind: str, rng: np.random.Generator, n: int, tmp: str) -> np.ndarray:
  t = np.arange(n) / SR
  if kind == "pink":
    return colored_noise(rng, n, 1.0)
  if kind == "brown":
    return colored_noise(rng, n, 2.0)
  if kind == "white":
    return rng.standard_normal(n)
  if kind == "hum":
    f0 = rng.choice([50.0, 60.0])
    return sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 8)) \
        + 0.05 * rng.standard_normal(n)
  if kind == "fan":
    return sox(rng.standard_normal(n), ["sinc", f"{int(rng.uniform(200, 600))}-"
                                        f"{int(rng.uniform(1500, 3000))}"], tmp)
  if kind == "babble":
    words = ("house", "tree", "water", "seven", "table", "morning", "number", "river")
    voices = [speak(str(rng.choice(words)), f"{ACCENTS[rng.integers(len(ACCENTS))]}+"
                    f"{rng.choice(variants())}", rng, tmp) for _ in range(5)]
    out = np.zeros(n)
    for v in voices:
      start = int(rng.integers(0, max(1, n - len(v))))
      out[start:start + len(v)] += v[:n - start] / (np.abs(v).max() + 1e-9)
    return out
  if kind == "rain":
    drops = (rng.random(n) < 0.004) * rng.standard_normal(n)
    return np.convolve(drops, np.exp(-np.arange(200) / 30.0), "same") + 0.3 * colored_noise(
        rng, n, 1.0)
  if kind == "engine":
    f0 = rng.uniform(25, 60)
    am = 1 + 0.8 * np.sign(np.sin(2 * np.pi * f0 * t))
    return sox(am * colored_noise(rng, n, 1.0), ["lowpass", str(int(rng.uniform(400, 1200)))],
               tmp)
  if kind == "clicks":
    return (rng.random(n) < 0.0008) * rng.standard_normal(n) * 8 + 0.1 * rng.standard_normal(n)
  raise ValueError(kind)


def noise(out: str, rng: np.random.Generator, tmp: str, scale: float) -> str:
  write = Writer(out)
  common, rare = ("yes", "no", "stop", "go"), ("left", "right")
  others = ("cat", "dog", "house", "tree", "seven", "water", "table", "hello", "morning", "blue")
  noises = {"train": ("pink", "brown", "white", "hum", "fan"),
            "test": ("babble", "rain", "engine", "clicks")}
  counts = {"train": {**{w: int(40 * scale) for w in common},
                      **{w: max(4, int(4 * scale)) for w in rare}, "background": int(200 * scale)},
            "test": {**{w: int(20 * scale) for w in common + rare},
                     "background": int(80 * scale)}}
  voices = variants()
  n = int(SECONDS * SR)
  for split, per in counts.items():
    snr = (10.0, 30.0) if split == "train" else (0.0, 15.0)
    for label, count in per.items():
      for _ in range(count):
        kind = str(rng.choice(noises[split]))
        bed = _noise(kind, rng, n, tmp)
        if label == "background" and rng.random() < 0.3:    # noise alone
          x = 0.9 * bed / (np.abs(bed).max() + 1e-9) * 10.0 ** (-rng.uniform(0, 20) / 20)
        else:
          word = str(rng.choice(others)) if label == "background" else label
          voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{voices[rng.integers(len(voices))]}"
          x = mix(place(speak(word, voice, rng, tmp), rng, lead=0.8), bed, rng.uniform(*snr), rng)
        write(split, label, kind, x)
  _meta(out, write, "noise", "other noise, imbalanced: test noise types never in training, at "
        "0-15 dB SNR (train 10-30 dB); left/right ten times rarer than the other keywords in "
        "train, a large background class", "noise type")
  return out


def _meta(out: str, write: Writer, name: str, shift: str, group: str, **extra) -> None:
  meta = {"name": name, "shift": shift, "group": group, "group_config": GROUP_REGEX,
          "clips": write.summary(), **extra}
  with open(os.path.join(out, "dataset.json"), "w") as f:
    json.dump(meta, f, indent=1)
  total = sum(sum(v.values()) for v in meta["clips"].values())
  print(f"{name}: {total} clips in {out} ({shift})", flush=True)


MAKERS = {"speakers": speakers, "instruments": instruments, "rooms": rooms, "noise": noise}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--only", default=",".join(MAKERS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scale", type=float, default=1.0, help="clip counts times this")
  args = parser.parse_args()
  for tool in ("espeak-ng", "sox", "fluidsynth"):
    if shutil.which(tool) is None:
      raise SystemExit(f"error: {tool} is not on PATH; install it (apt-get install {tool}).")
  for path in SOUNDFONTS.values():
    if not os.path.exists(path):
      raise SystemExit(f"error: {path} is missing; apt-get install fluid-soundfont-gm "
                       "timgm6mb-soundfont.")
  for k, name in enumerate(args.only.split(",")):
    out = os.path.join(args.out, name)
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
      MAKERS[name](out, np.random.default_rng([args.seed, k]), tmp, args.scale)


if __name__ == "__main__":
  main()
