"""Small on-disk datasets for the data tests: synthesised clips written as real audio files."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import soundfile as sf

from jaxaudio.runs.configs import base_config

SR = 44100


def tone(freq, seconds, sr=SR, seed=0, level=0.3):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  return (level * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(
      np.float32)


def write_class_folder(root, classes=("low", "mid", "high"), per_class=5, seconds=1.2,
                       splits=None):
  """root/<class>/*.wav, or root/<split>/<class>/*.wav when `splits` maps split -> count."""
  freqs = {c: 200 * (i + 1) for i, c in enumerate(classes)}
  layout = splits or {None: per_class}
  for split, count in layout.items():
    for c in classes:
      d = os.path.join(root, split, c) if split else os.path.join(root, c)
      os.makedirs(d, exist_ok=True)
      for i in range(count):
        sf.write(os.path.join(d, f"{c}_{i}.wav"),
                 tone(freqs[c] * (1 + 0.05 * i), seconds + 0.3 * (i % 3), seed=i), SR)
  return root


def data_config(tmp_path, source, **overrides):
  cfg = base_config().data
  cfg.source = source
  cfg.prepared_dir = str(tmp_path / "prepared")
  cfg.workers = 1
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def saved_state(workdir, step):
  """The TrainState tree of a run's checkpoint `step` as numpy arrays, whatever the number
  of processes and devices that wrote it (its saved shardings are not restored)."""
  ckptr = ocp.StandardCheckpointer()
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  meta = ckptr.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  return ckptr.restore(path, jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype), meta))


def pausing_env(step, paused_dir, base=None):
  """`base` (os.environ) in which every jaxaudio.main / jaxaudio.sweep process pauses once
  checkpoint `step` is on disk and writes paused_dir/<pid> (tests/pausing/sitecustomize.py)."""
  base = dict(os.environ if base is None else base)
  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pausing")
  path = os.pathsep.join(filter(None, (here, base.get("PYTHONPATH"))))
  return dict(base, PYTHONPATH=path, PAUSE_STEP=str(step), PAUSED_DIR=str(paused_dir))
