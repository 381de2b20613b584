"""Make music data sets with a shift to unseen instruments (dev tooling, not a runtime need).

--task=styles (default):

Seven styles told apart by rhythm, bass and harmony, not by timbre: waltz (3/4 oom-pah-pah),
march (2/4, snare on the off-beats), rock (8th-note backbeat, power chords), bossa (clave,
syncopated bass), techno (four on the floor, 16th synth bass), ballad (slow arpeggios) and
swing (ride cymbal in triplet feel, walking bass). Every clip is a 4 s multi-track
arrangement (drums, bass, chords, a lead melody half of the time) in a random key, tempo and
chord progression, written as a MIDI file and rendered by fluidsynth with one of two General
MIDI soundfonts (FluidR3, TimGM6mb), then mixed with a little noise at a random level.

A "band" is the instrumentation: lead, chord and bass programs and a drum kit, drawn at
random, and it plays every style. Test bands never play in train, so the test measures
styles played by instruments the model has not heard in them. The band is in the file name
(`<style>__<band>__<n>.wav`), so `--config.data.group='regex:__([^_]+)__'` carves validation
from train band-disjoint, mirroring the test shift.

  python bench/make_music_dataset.py --out=/tmp/music [--train_bands=24 --test_bands=8]

--task=lead: which instrument family plays the lead melody over an accompaniment (drums,
bass, a synth-pad comping in a random style): piano, chromatic percussion, organ, guitar,
solo strings, brass, reed, pipe or synth lead -- timbre heard inside a mix. Of each family's
8 General MIDI programs, 2 play only in test; the program is the group in the file name.

  python bench/make_music_dataset.py --task=lead --out=/tmp/music_lead [--per_program=12]

Needs fluidsynth and the fluid-soundfont-gm and timgm6mb-soundfont packages (Debian).
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

from make_shift_datasets import SOUNDFONTS, Writer, _vlq, colored_noise

SR = 22050
SECONDS = 4.0
GAP = 5.0            # seconds between clips in one rendered MIDI file
STYLES = ("waltz", "march", "rock", "bossa", "techno", "ballad", "swing")
TEMPO = {"waltz": (150, 190), "march": (108, 128), "rock": (108, 140), "bossa": (124, 146),
         "techno": (124, 136), "ballad": (60, 76), "swing": (130, 180)}
LEAD = tuple(range(0, 8)) + tuple(range(16, 24)) + tuple(range(40, 48)) + tuple(
    range(56, 88))
CHORDS = tuple(range(0, 8)) + tuple(range(16, 32)) + (48, 49, 50, 51, 88, 89, 90, 91, 94, 95)
BASS = tuple(range(32, 40))
KITS = (0, 8, 16, 24, 25, 32, 40)
PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 0), (0, 4, 5, 3), (5, 3, 0, 4), (0, 0, 3, 4))
MAJOR = (0, 2, 4, 5, 7, 9, 11)
KICK, SNARE, RIM, CLOSED, OPEN, RIDE, PEDAL = 36, 38, 37, 42, 46, 51, 44
DRUM_CH, BASS_CH, CHORD_CH, LEAD_CH = 9, 0, 1, 2


def triad(degree: int, key: int) -> list[int]:
  """Pitch classes (semitones above the key) of the diatonic triad on `degree`."""
  return [MAJOR[(degree + i) % 7] + 12 * ((degree + i) // 7) + key for i in (0, 2, 4)]


def arrangement(style: str, rng: np.random.Generator, with_lead: bool
                ) -> list[tuple[float, int, int, int, float]]:
  """(start s, channel, pitch, velocity, duration s) notes of one SECONDS-long clip."""
  bpm = rng.uniform(*TEMPO[style])
  beat = 60.0 / bpm
  key = int(rng.integers(0, 12))
  prog = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
  meter = {"waltz": 3, "march": 2}.get(style, 4)
  bar = meter * beat
  notes = []

  def add(t, ch, pitch, vel, dur):
    if t < SECONDS:
      notes.append((t, ch, int(pitch), int(np.clip(vel + rng.integers(-8, 9), 20, 127)),
                    min(dur, SECONDS - t)))

  t_bar, i = 0.0, 0
  while t_bar < SECONDS:
    chord = triad(prog[i % 4], key)
    root = 36 + chord[0] % 12
    c3 = [48 + p for p in chord]
    if style == "waltz":
      add(t_bar, BASS_CH, root, 95, beat * 0.9)
      for b in (1, 2):
        for p in c3:
          add(t_bar + b * beat, CHORD_CH, p + 12, 70, beat * 0.6)
        add(t_bar + b * beat, DRUM_CH, CLOSED, 55, 0.1)
      add(t_bar, DRUM_CH, KICK, 80, 0.1)
    elif style == "march":
      add(t_bar, BASS_CH, root, 100, beat * 0.5)
      add(t_bar + beat, BASS_CH, root + 7, 95, beat * 0.5)
      for b in (0.5, 1.5):
        for p in c3:
          add(t_bar + b * beat, CHORD_CH, p + 12, 75, beat * 0.3)
      add(t_bar, DRUM_CH, KICK, 90, 0.1)
      for b in (0.5, 1.5, 1.75):
        add(t_bar + b * beat, DRUM_CH, SNARE, 85, 0.1)
    elif style == "rock":
      for e in range(8):
        t = t_bar + e * beat / 2
        add(t, BASS_CH, root, 95, beat * 0.45)
        add(t, CHORD_CH, c3[0], 85, beat * 0.45)
        add(t, CHORD_CH, c3[0] + 7, 85, beat * 0.45)
        add(t, DRUM_CH, CLOSED, 65, 0.1)
      for b in (0, 2, 2.5):
        add(t_bar + b * beat, DRUM_CH, KICK, 100, 0.1)
      for b in (1, 3):
        add(t_bar + b * beat, DRUM_CH, SNARE, 100, 0.1)
    elif style == "bossa":
      for b, p in ((0, root), (1.5, root + 7), (2, root + 7), (3.5, root)):
        add(t_bar + b * beat, BASS_CH, p, 90, beat * 0.9)
      for b in (0, 1.5, 3, 4.5, 6):            # 3-2 son clave over two half-time beats
        add(t_bar + b * beat / 2, DRUM_CH, RIM, 80, 0.1)
      for b in (0.5, 1.5, 2.5, 3.0):
        for p in c3:
          add(t_bar + b * beat, CHORD_CH, p + 12, 60, beat * 0.4)
      for e in range(8):
        add(t_bar + e * beat / 2, DRUM_CH, CLOSED, 45, 0.1)
    elif style == "techno":
      for b in range(4):
        add(t_bar + b * beat, DRUM_CH, KICK, 110, 0.1)
        add(t_bar + (b + 0.5) * beat, DRUM_CH, OPEN, 75, 0.1)
      for s in range(16):
        add(t_bar + s * beat / 4, BASS_CH, root + (12 if s % 4 == 2 else 0), 90, beat / 5)
      for b in (0.75, 2.75):
        for p in c3:
          add(t_bar + b * beat, CHORD_CH, p + 12 - 3 * (p == c3[1]), 85, beat / 4)
    elif style == "ballad":
      add(t_bar, BASS_CH, root, 80, bar * 0.95)
      pattern = c3 + [c3[0] + 12, c3[2], c3[1], c3[2], c3[0] + 12]
      for e, p in enumerate(pattern[:8]):
        add(t_bar + e * beat / 2, CHORD_CH, p, 60, beat * 0.9)
      add(t_bar, DRUM_CH, KICK, 60, 0.1)
      add(t_bar + 2 * beat, DRUM_CH, RIM, 50, 0.1)
    else:  # swing
      walk = [root, root + 4, root + 7, root + 9]
      for b in range(4):
        add(t_bar + b * beat, BASS_CH, walk[b] - 12 * (b == 3 and rng.random() < 0.5), 90,
            beat * 0.85)
        add(t_bar + b * beat, DRUM_CH, RIDE, 70, 0.1)
        if b % 2:
          add(t_bar + (b + 2 / 3) * beat, DRUM_CH, RIDE, 55, 0.1)
          add(t_bar + b * beat, DRUM_CH, PEDAL, 60, 0.1)
      for b in (1 + 2 / 3, 3):
        for p in c3:
          add(t_bar + b * beat, CHORD_CH, p + 12, 60, beat * 0.3)
    t_bar += bar
    i += 1
  if with_lead:
    step = beat / (2 if style != "ballad" else 1)
    t = float(rng.integers(0, 4)) * step
    scale = [60 + key + m for m in MAJOR] + [72 + key + m for m in MAJOR]
    pos = int(rng.integers(0, 7))
    while t < SECONDS:
      pos = int(np.clip(pos + rng.integers(-2, 3), 0, len(scale) - 1))
      dur = step * float(rng.choice([1, 1, 2, 3]))
      add(t, LEAD_CH, scale[pos], 85, dur * 0.9)
      t += dur
  return notes


def midi_file(clips: list[list[tuple[float, int, int, int, float]]], band: dict[str, int]
              ) -> bytes:
  """One format-0 MIDI file with each clip's notes starting GAP seconds after the last
  (120 bpm, 480 ticks per beat = 960 ticks per second)."""
  events = []   # (tick, order, bytes): note-offs before note-ons at the same tick
  for k, notes in enumerate(clips):
    base = k * GAP
    for t, ch, pitch, vel, dur in notes:
      events.append((int((base + t) * 960), 1, bytes([0x90 | ch, pitch, vel])))
      events.append((int((base + t + dur) * 960), 0, bytes([0x80 | ch, pitch, 0])))
  head = bytes([0xFF, 0x51, 3]) + (500000).to_bytes(3, "big")
  setup = [bytes([0xC0 | BASS_CH, band["bass"]]), bytes([0xC0 | CHORD_CH, band["chords"]]),
           bytes([0xC0 | LEAD_CH, band["lead"]]), bytes([0xC0 | DRUM_CH, band["kit"]])]
  ev = _vlq(0) + head + b"".join(_vlq(0) + s for s in setup)
  now = 0
  for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
    ev += _vlq(tick - now) + msg
    now = tick
  ev += _vlq(960) + bytes([0xFF, 0x2F, 0])
  return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(ev)) + ev


def render(clips, band, soundfont: str, tmp: str) -> list[np.ndarray]:
  mid, wav = os.path.join(tmp, "m.mid"), os.path.join(tmp, "m.wav")
  with open(mid, "wb") as f:
    f.write(midi_file(clips, band))
  subprocess.run(["fluidsynth", "-ni", "-g", "0.5", "-r", str(SR), "-F", wav,
                  SOUNDFONTS[soundfont], mid], check=True, capture_output=True)
  x, _ = sf.read(wav, dtype="float64")
  x = x.mean(axis=1) if x.ndim == 2 else x
  n, step = int(SECONDS * SR), int(GAP * SR)
  return [np.pad(x[k * step:k * step + n], (0, max(0, k * step + n - len(x))))
          for k in range(len(clips))]


LEAD_FAMILIES = {"piano": 0, "chromatic_percussion": 8, "organ": 16, "guitar": 24,
                 "strings": 40, "brass": 56, "reed": 64, "pipe": 72, "synth_lead": 80}
PADS = tuple(range(88, 96))


def lead_task(args, rng: np.random.Generator, write: Writer, tmp: str) -> dict[str, str]:
  """Clips labelled by the lead's instrument family; 2 programs per family only in test."""
  for family, first in LEAD_FAMILIES.items():
    programs = [first + int(p) for p in rng.permutation(8)]
    for split, chosen in (("test", programs[:2]), ("train", programs[2:])):
      for program in chosen:
        for soundfont in SOUNDFONTS:
          band = {"lead": program, "chords": int(rng.choice(PADS)),
                  "bass": int(rng.choice(BASS)), "kit": int(rng.choice(KITS))}
          clips = []
          for _ in range(args.per_program // 2):
            notes = arrangement(STYLES[rng.integers(len(STYLES))], rng, with_lead=True)
            # the lead louder than its accompaniment, the pad softer
            clips.append([(t, ch, p, min(127, v + 25) if ch == LEAD_CH else
                           (v - 20 if ch == CHORD_CH else v), d) for t, ch, p, v, d in notes])
          for x in render(clips, band, soundfont, tmp):
            write(split, family, f"p{program:03d}", _finish(x, rng))
    print(f"{family}: programs {programs[2:]} train, {programs[:2]} test", flush=True)
  return {"name": "music_lead", "shift": "unseen instruments: 2 of the 8 General MIDI programs "
          "of each lead family play only in test", "group": "GM program of the lead"}


def _finish(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A little pink noise (35-50 dB below the music) and a random level (0 to -12 dB)."""
  x = x + colored_noise(rng, len(x), 1.0) * 10 ** (-rng.uniform(35, 50) / 20) * (
      np.sqrt(np.mean(x ** 2)) + 1e-9)
  return 0.9 * x / (np.abs(x).max() + 1e-12) * 10 ** (-rng.uniform(0, 12) / 20)


def styles_task(args, rng: np.random.Generator, write: Writer, tmp: str) -> dict[str, str]:
  bands = args.train_bands + args.test_bands
  for b in range(bands):
    split = "test" if b < args.test_bands else "train"
    band = {"lead": int(rng.choice(LEAD)), "chords": int(rng.choice(CHORDS)),
            "bass": int(rng.choice(BASS)), "kit": int(rng.choice(KITS))}
    name = f"band{b:02d}"
    for soundfont in SOUNDFONTS:
      labels = [s for s in STYLES for _ in range(args.per_band)]
      clips = [arrangement(s, rng, with_lead=rng.random() < 0.5) for s in labels]
      for style, x in zip(labels, render(clips, band, soundfont, tmp)):
        write(split, style, name, _finish(x, rng))
    print(f"band {b + 1}/{bands} ({split}): {band}", flush=True)
  return {"name": "music_styles", "shift": "unseen bands: the instrumentations (lead, chord, "
          "bass programs and drum kit) of the test split never play in train", "group": "band"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--task", choices=("styles", "lead"), default="styles")
  parser.add_argument("--per_program", type=int, default=12, help="lead: clips per program")
  parser.add_argument("--train_bands", type=int, default=24)
  parser.add_argument("--test_bands", type=int, default=8)
  parser.add_argument("--per_band", type=int, default=2, help="clips per style and band")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if shutil.which("fluidsynth") is None:
    raise SystemExit("error: fluidsynth is not on PATH; apt-get install fluidsynth.")
  rng = np.random.default_rng(args.seed)
  shutil.rmtree(args.out, ignore_errors=True)
  write = Writer(args.out)
  with tempfile.TemporaryDirectory() as tmp:
    task = {"styles": styles_task, "lead": lead_task}[args.task]
    meta = task(args, rng, write, tmp)
  meta.update(group_config="regex:__([^_]+)__", clips=write.summary())
  with open(os.path.join(args.out, "dataset.json"), "w") as f:
    json.dump(meta, f, indent=1)
  print(f"{meta['name']}: {sum(write.counts.values())} clips in {args.out}")


if __name__ == "__main__":
  main()
