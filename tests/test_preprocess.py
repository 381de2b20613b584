"""Waveform clean-up: loudness targets, spectral gating, silence trim."""

import numpy as np
import pytest

from jaxaudio.audio import preprocess

SR = 44100


def test_loudness_targets():
  x = (0.05 * np.sin(np.arange(SR) / 10)).astype(np.float32)
  peak = preprocess.normalise_loudness(x, "peak", -1.0)
  assert np.max(np.abs(peak)) == pytest.approx(10 ** (-1 / 20), rel=1e-5)
  rms = preprocess.normalise_loudness(x, "rms", -20.0)
  assert 20 * np.log10(np.sqrt(np.mean(rms ** 2))) == pytest.approx(-20.0, abs=1e-3)
  loud = preprocess.normalise_loudness(x, "rms", -1.0)     # a sine at -1 dB RMS would clip
  assert np.max(np.abs(loud)) <= 1.0 + 1e-6
  silent = np.zeros(100, np.float32)
  assert np.all(preprocess.normalise_loudness(silent, "peak", -1.0) == 0)
  assert preprocess.normalise_loudness(x, "none", -1.0) is x


def test_spectral_gate_removes_stationary_noise_keeps_tone():
  rng = np.random.default_rng(0)
  t = np.arange(3 * SR) / SR
  tone = 0.3 * np.sin(2 * np.pi * 1000 * t) * (t > 1.0)   # silent first second: noise only
  noise = 0.02 * rng.standard_normal(len(t))
  y = preprocess.spectral_gate((tone + noise).astype(np.float32), SR, strength=1.0)
  noise_before = np.sqrt(np.mean(noise[: SR // 2] ** 2))
  noise_after = np.sqrt(np.mean(y[: SR // 2] ** 2))
  assert noise_after < 0.3 * noise_before                  # > 10 dB less noise
  keep = np.sqrt(np.mean(y[int(1.5 * SR):] ** 2)) / np.sqrt(np.mean(tone[int(1.5 * SR):] ** 2))
  assert 0.9 < keep < 1.1                                   # the tone survives
  same = preprocess.spectral_gate((tone + noise).astype(np.float32), SR, strength=0.0)
  np.testing.assert_array_equal(same, (tone + noise).astype(np.float32))


def test_trim_silence():
  x = np.zeros(3 * SR, np.float32)
  x[SR:2 * SR] = 0.5 * np.sin(np.arange(SR) / 5)
  y = preprocess.trim_silence(x, top_db=40)
  assert SR <= len(y) <= SR + 2 * 2048
  assert np.sum(y ** 2) == pytest.approx(np.sum(x ** 2), rel=1e-6)   # nothing audible lost
