"""Model benchmarks: conversion time, frontend speed and embedding throughput on this host.

  python bench/bench_models.py [--models=aisfx,panns_cnn14] [--batch=32] [--repeats=5]

aiSFX and the musicnn family use their real checkpoints (fetched once into the cache); PANNs
use seeded random weights of the official shapes (throughput does not depend on the values).
Prints one line a figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

from jaxaudio.audio import frontend
from jaxaudio.inference.embedder import Embedder
from jaxaudio.models.registry import get_model
from jaxaudio.weights import convert, pretrained, sources

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "golden"))
from random_weights import random_state_dict  # noqa: E402  pylint: disable=wrong-import-position


def panns_variables(info):
  return convert.convert_state_dict(info, random_state_dict(convert.torch_shapes(info), 0))


def bench_convert(name: str, path: str):
  info = get_model(name)
  with tempfile.TemporaryDirectory() as tmp:
    times = []
    for i in range(3):
      start = time.perf_counter()
      pretrained.convert_to(info, os.path.join(tmp, f"c{i}"), path)
      times.append(time.perf_counter() - start)
  print(f"convert {name} ({info.original_format}) -> orbax: best {min(times):.2f} s of 3 "
        f"(first {times[0]:.2f} s, includes orbax start-up)")


def bench_frontend(repeats):
  rng = np.random.default_rng(0)
  for name in ("aisfx", "panns_cnn14", "musicnn_msd"):
    spec = get_model(name).spec
    x = (0.1 * rng.standard_normal(60 * spec.sample_rate)).astype(np.float32)
    frontend.log_mel(x[:spec.sample_rate], spec)  # builds and caches the filterbank
    start = time.perf_counter()
    for _ in range(repeats):
      frontend.log_mel(x, spec)
    per = (time.perf_counter() - start) / repeats
    print(f"frontend {name}: {60 / per:.0f}x real time (60 s of audio in {per * 1e3:.0f} ms)")


def bench_embed(name, batch, repeats):
  info = get_model(name)
  variables = (panns_variables(info) if name.startswith("panns")
               else pretrained.pretrained_variables(info)[0])
  emb = Embedder(info, variables, batch_size=batch)
  x = np.random.default_rng(0).standard_normal(
      (batch, info.spec.frames_per_window, info.spec.n_mels)).astype(np.float32)
  emb.embed_windows(x)  # compile
  start = time.perf_counter()
  for _ in range(repeats):
    emb.embed_windows(x)
  per = (time.perf_counter() - start) / repeats
  print(f"embed {name}: {batch / per:.1f} windows/s ({info.spec.window_seconds:.2f} s windows, "
        f"batch {batch}, {jax.devices()[0].platform}), "
        f"{batch * info.spec.window_seconds / per:.0f}x real time")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="aisfx,musicnn_msd,musicnn_mtt,vgg_msd,vgg_mtt,"
                  "panns_cnn14,panns_cnn10,panns_cnn6")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()
  print(f"host: {os.cpu_count()} CPUs, jax {jax.__version__}, devices {jax.devices()}")
  bench_convert("aisfx", sources.aisfx_checkpoint())
  bench_convert("musicnn_msd", sources.musicnn_checkpoint("MSD_musicnn"))
  bench_frontend(args.repeats)
  for name in args.models.split(","):
    bench_embed(name, args.batch, args.repeats)


if __name__ == "__main__":
  main()
