"""The built-in demo: a synthesised sound-event dataset, deterministic by seed, no network.

Ten sound-effect-like classes whose parameters are randomised per clip so that classes
overlap in pitch and loudness; every clip sits on background noise at a random SNR. It
exists so the default config runs anywhere; it is not a benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np

VERSION = 1
CLASSES = ("applause", "bell", "engine", "footsteps", "knock", "rain", "siren", "whistle",
           "alarm_beep", "wind")


def _env(n, sr, attack, decay):
  t = np.arange(n) / sr
  return np.minimum(t / max(attack, 1e-4), 1.0) * np.exp(-t / decay)


def _bursts(rng, n, sr, count, width_s, decay_s, colour=None):
  x = np.zeros(n)
  for start in rng.uniform(0, max(n / sr - width_s, 0.01), count):
    i = int(start * sr)
    m = min(int(width_s * sr), n - i)
    burst = rng.standard_normal(m) * _env(m, sr, 0.001, decay_s)
    if colour is not None:
      burst = np.convolve(burst, colour, mode="same")
    x[i:i + m] += burst * rng.uniform(0.4, 1.0)
  return x


def _lowpass_kernel(cutoff, sr, taps=63):
  t = np.arange(taps) - taps // 2
  h = np.sinc(2 * cutoff / sr * t) * np.hamming(taps)
  return h / h.sum()


def synth_event(name: str, rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
  n = int(seconds * sr)
  t = np.arange(n) / sr
  if name == "bell":
    f0 = rng.uniform(300, 1200)
    partials = (1.0, 2.0, 2.4, 3.0, 4.2, 5.4)
    x = sum(rng.uniform(0.2, 1.0) / (k + 1) * np.sin(2 * np.pi * f0 * p * t)
            * np.exp(-t / rng.uniform(0.3, 1.5) * (1 + k * 0.3)) for k, p in enumerate(partials))
    x = np.roll(x, int(rng.uniform(0, 0.5) * sr))
  elif name == "siren":
    centre, depth, rate = rng.uniform(500, 1100), rng.uniform(150, 500), rng.uniform(0.3, 2.0)
    f = centre + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.28))
    x = np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.3 * np.sin(4 * np.pi * np.cumsum(f) / sr)
  elif name == "engine":
    f0 = rng.uniform(30, 120) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
    ph = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * ph) / k for k in range(1, 12)) * (1 + 0.3 * np.sin(ph / 2))
    x += 0.3 * np.convolve(rng.standard_normal(n), _lowpass_kernel(400, sr), mode="same")
  elif name == "footsteps":
    x = np.zeros(n)
    step = rng.uniform(0.35, 0.7)
    kernel = _lowpass_kernel(rng.uniform(800, 3000), sr)
    for s in np.arange(rng.uniform(0, step), seconds - 0.1, step * rng.uniform(0.9, 1.1)):
      i, m = int(s * sr), int(0.08 * sr)
      m = min(m, n - i)
      thud = rng.standard_normal(m) * _env(m, sr, 0.002, 0.02)
      x[i:i + m] += np.convolve(thud, kernel, mode="same")
  elif name == "knock":
    x = np.zeros(n)
    f0 = rng.uniform(150, 600)
    for s in rng.uniform(0, seconds - 0.2, int(rng.integers(2, 6))):
      i, m = int(s * sr), min(int(0.15 * sr), n - int(s * sr))
      tt = np.arange(m) / sr
      x[i:i + m] += np.sin(2 * np.pi * f0 * tt) * np.exp(-tt / 0.025) + 0.3 * rng.standard_normal(
          m) * np.exp(-tt / 0.005)
  elif name == "rain":
    x = 0.3 * np.convolve(rng.standard_normal(n), _lowpass_kernel(rng.uniform(3000, 8000), sr),
                          mode="same")
    x += _bursts(rng, n, sr, int(rng.integers(40, 150) * seconds), 0.01, 0.002)
  elif name == "whistle":
    f = rng.uniform(900, 3000) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))
    if rng.random() < 0.5:
      f = f * np.linspace(1.0, rng.uniform(0.7, 1.4), n)
    x = np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.05 * rng.standard_normal(n)
    x *= _env(n, sr, 0.05, seconds * 3)
  elif name == "applause":
    x = _bursts(rng, n, sr, int(rng.integers(60, 200) * seconds), 0.03, 0.008,
                colour=_lowpass_kernel(rng.uniform(2000, 6000), sr))
  elif name == "alarm_beep":
    f0, period = rng.uniform(600, 3000), rng.uniform(0.2, 0.6)
    gate = (np.mod(t, period) < period * rng.uniform(0.3, 0.6)).astype(float)
    x = np.sign(np.sin(2 * np.pi * f0 * t)) * 0.5 * gate
    x = np.convolve(x, _lowpass_kernel(6000, sr), mode="same")
  elif name == "wind":
    gust = 1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.28))
    x = np.convolve(rng.standard_normal(n), _lowpass_kernel(rng.uniform(200, 900), sr),
                    mode="same") * gust
  else:
    raise ValueError(f"unknown demo class {name!r}")
  return x


def synth_clip(name: str, rng: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
  """One clip: the event at a random level on pink-ish background noise at 0-25 dB SNR."""
  x = synth_event(name, rng, sr, seconds)
  x = x / (np.sqrt(np.mean(x ** 2)) + 1e-9)
  noise = np.cumsum(rng.standard_normal(len(x))) * 0.02 + rng.standard_normal(len(x))
  noise -= np.convolve(noise, np.ones(2048) / 2048, mode="same")  # remove drift
  noise /= np.sqrt(np.mean(noise ** 2)) + 1e-9
  snr_db = rng.uniform(0.0, 25.0)
  y = x + noise * 10 ** (-snr_db / 20)
  level = 10 ** (rng.uniform(-30, -6) / 20)
  return (y / (np.max(np.abs(y)) + 1e-9) * level).astype(np.float32)


def demo_dir(root: str, seed: int, clips: dict[str, int], seconds: float, sample_rate: int) -> str:
  """Render the demo dataset as root/<id>/{train,validation,test}/<class>/*.wav once."""
  import soundfile as sf  # pylint: disable=import-outside-toplevel
  params = {"version": VERSION, "seed": seed, "clips": dict(sorted(clips.items())),
            "seconds": seconds, "sample_rate": sample_rate, "classes": CLASSES}
  key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
  out = os.path.join(root, f"demo-{key}")
  if os.path.isfile(os.path.join(out, "COMPLETE")):
    return out
  tmp = f"{out}.tmp-{os.getpid()}"
  for split_index, (split, count) in enumerate(sorted(clips.items())):
    for class_index, name in enumerate(CLASSES):
      folder = os.path.join(tmp, split, name)
      os.makedirs(folder, exist_ok=True)
      rng = np.random.default_rng([seed, split_index, class_index])
      for i in range(count):
        dur = seconds * rng.uniform(0.6, 1.4)
        sf.write(os.path.join(folder, f"{name}_{i:03d}.wav"),
                 synth_clip(name, rng, sample_rate, dur), sample_rate, subtype="PCM_16")
  with open(os.path.join(tmp, "COMPLETE"), "w") as f:
    json.dump(params, f)
  if os.path.isdir(out):  # a stale partial copy from a killed run
    shutil.rmtree(out)
  os.replace(tmp, out)
  return out
