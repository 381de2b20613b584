"""The numpy frontends against the originals' own log-mels (tests/golden/make_golden.py)."""

import json
import os

import numpy as np
import pytest

from jaxaudio.audio import frontend
from jaxaudio.audio.io import load_audio
from jaxaudio.models.registry import AISFX_SPEC, PANNS_SPEC
from conftest import GOLDEN

AUDIO = os.path.join(GOLDEN, "audio")


@pytest.mark.parametrize("name", ["tone_44k", "siren_44k", "knocks_44k"])
def test_aisfx_frontend_matches_essentia_path(golden, name):
  ref = golden("aisfx_frontend.npz")[name]           # aisfx's compute_spectrogram, normalised
  ours = frontend.log_mel(load_audio(os.path.join(AUDIO, name + ".flac"), 44100), AISFX_SPEC)
  assert ours.shape == ref.shape                       # same frame count as Essentia
  assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.parametrize("name", ["tone_32k", "knocks_32k"])
def test_panns_frontend_matches_torchlibrosa(golden, name):
  ref = golden("panns_frontend.npz")[name]            # dB, as Cnn14's own extractor gives it
  ours = frontend.log_mel(load_audio(os.path.join(AUDIO, name + ".flac"), 32000), PANNS_SPEC)
  assert ours.shape == ref.shape
  assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.parametrize("rate", [22050, 48000])
def test_resampled_input_stays_close_to_essentia(golden, rate):
  """Essentia resamples with libsamplerate, we with soxr: bound the measured difference."""
  ref = golden("aisfx_frontend_resampled.npz")[f"tone_{rate}"]
  ours = frontend.log_mel(load_audio(os.path.join(AUDIO, f"tone_{rate // 1000}k.flac"), 44100),
                          AISFX_SPEC)
  assert ours.shape == ref.shape
  diff = np.abs(ours - ref)
  assert diff.mean() < 5e-4 and diff.max() < 0.06     # measured: mean 1.1e-4, max 0.040


def test_essentia_loader_leaves_level_alone():
  with open(os.path.join(GOLDEN, "measurements.json")) as f:
    assert json.load(f)["essentia_easyloader_gain"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("spec", [AISFX_SPEC, PANNS_SPEC], ids=["essentia", "reflect"])
@pytest.mark.parametrize("n", [1000, 2048, 44100, 44101, 100000])
def test_frame_counts(spec, n):
  x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
  expected = -(-(n + 1024) // 1024) if spec is AISFX_SPEC else 1 + n // 320
  assert frontend.num_frames(n, spec) == expected == frontend.log_mel(x, spec).shape[0]


def test_silence_and_windows():
  assert frontend.silence_value(AISFX_SPEC) == 0.0
  assert frontend.silence_value(PANNS_SPEC) == -100.0   # exact on every CPU (float64 log)
  digital_silence = frontend.log_mel(np.zeros(32000, np.float32), PANNS_SPEC)
  assert np.all(digital_silence == frontend.silence_value(PANNS_SPEC))
  mel = np.arange(250 * 96, dtype=np.float32).reshape(250, 96)
  windows, starts = frontend.split_windows(mel, AISFX_SPEC, hop_frames=50)
  assert windows.shape == (4, 100, 96) and list(starts) == [0, 50, 100, 150]
  np.testing.assert_array_equal(windows[2], mel[100:200])
  mel = np.arange(260 * 96, dtype=np.float32).reshape(260, 96)
  windows, starts = frontend.split_windows(mel, AISFX_SPEC, 50, keep_partial=True)
  assert list(starts) == [0, 50, 100, 150, 200] and np.all(windows[-1, 60:] == 0.0)
  np.testing.assert_array_equal(windows[-1, :60], mel[200:])
  short, starts = frontend.split_windows(mel[:30], PANNS_SPEC, 500)
  assert short.shape == (1, 1001, 96) and np.all(short[0, 30:] == -100.0)


def test_spec_fingerprint_and_roundtrip():
  assert AISFX_SPEC.fingerprint() != PANNS_SPEC.fingerprint()
  assert type(AISFX_SPEC).from_dict(AISFX_SPEC.to_dict()) == AISFX_SPEC
  with pytest.raises(ValueError, match="fmin"):
    type(AISFX_SPEC)(**{**AISFX_SPEC.to_dict(), "fmax": 30000.0})


def test_spec_mismatch_names_both():
  from jaxaudio.audio.spec import check_same_spec
  from jaxaudio.runtime.errors import SpecMismatchError
  check_same_spec(AISFX_SPEC, AISFX_SPEC, what="data", model="aisfx")
  with pytest.raises(SpecMismatchError) as err:
    check_same_spec(AISFX_SPEC, PANNS_SPEC, what="prepared data", model="aisfx")
  msg = str(err.value)
  assert AISFX_SPEC.fingerprint() in msg and PANNS_SPEC.fingerprint() in msg
  assert "sample_rate: model 44100 vs 32000" in msg
