"""Robustness perturbations do what their names say."""

import numpy as np
import pytest

from jaxaudio.evaluation import perturb

SR = 16000


def tone(freq, seconds=1.0, sr=SR):
  t = np.arange(int(seconds * sr)) / sr
  return 0.5 * np.sin(2 * np.pi * freq * t)


def db(x):
  return 10 * np.log10(np.mean(np.square(x)))


@pytest.mark.parametrize("kind", ["white", "pink"])
@pytest.mark.parametrize("snr", [30, 10, 0])
def test_noise_at_the_requested_snr(kind, snr):
  x = tone(440)
  y = perturb.add_noise(kind, snr)(x, SR, np.random.default_rng(0))
  assert db(x) - db(y - x) == pytest.approx(snr, abs=1e-6)


def test_pink_noise_falls_3db_per_octave():
  n = perturb._noise_like("pink", 2 ** 18, np.random.default_rng(0))
  p = np.abs(np.fft.rfft(n)) ** 2
  f = np.fft.rfftfreq(len(n), 1 / SR)
  band = lambda lo: p[(f >= lo) & (f < 2 * lo)].mean()
  assert 10 * np.log10(band(500) / band(1000)) == pytest.approx(3.0, abs=0.3)
  w = np.abs(np.fft.rfft(perturb._noise_like("white", 2 ** 18, np.random.default_rng(0)))) ** 2
  assert 10 * np.log10(w[(f >= 500) & (f < 1000)].mean() / w[(f >= 1000) & (f < 2000)].mean()) \
      == pytest.approx(0.0, abs=0.3)


def test_lowpass_keeps_the_telephone_band_and_removes_the_rest():
  f = perturb.lowpass(4000.0)
  rng = np.random.default_rng(0)
  assert db(f(tone(1000, sr=44100), 44100, rng)) - db(tone(1000, sr=44100)) > -0.05
  assert db(f(tone(6000, sr=44100), 44100, rng)) - db(tone(6000, sr=44100)) < -40


def test_gain_clip_shift_crop():
  rng = np.random.default_rng(0)
  x = tone(300)
  assert np.allclose(perturb.gain(-12)(x, SR, rng), x * 10 ** (-0.6))
  c = perturb.hard_clip(-12)(x, SR, rng)
  assert np.max(np.abs(c)) == pytest.approx(0.5 * 10 ** (-0.6))
  s = perturb.time_shift(0.25)(x, SR, rng)
  assert len(s) == len(x) and not s[:4000].any() and np.array_equal(s[4000:], x[:12000])
  h = perturb.crop_half()(x, SR, rng)
  assert np.array_equal(h, x[4000:12000])


def test_lossy_round_trip_and_conditions():
  names = list(perturb.conditions())
  assert names[0] == "clean" and "white_noise_0dB" in names and "lowpass_4kHz" in names
  if not perturb.lossy_supported("MP3", "MPEG_LAYER_III"):
    pytest.skip("this libsndfile has no MP3 encoder")
  assert "mp3" in names
  x = tone(440, sr=44100) + 0.05 * np.random.default_rng(1).standard_normal(44100)
  y = perturb.lossy("MP3", "MPEG_LAYER_III")(x, 44100, None)
  assert len(y) == len(x) and not np.array_equal(x, y)
  spec_x, spec_y = np.abs(np.fft.rfft(x)), np.abs(np.fft.rfft(y))
  assert np.corrcoef(spec_x, spec_y)[0, 1] > 0.9     # same sound, codec artefacts
