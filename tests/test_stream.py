"""jaxaudio.inference.stream against the file path, with no trained model: the frames of a
signal fed in random blocks are bitwise frontend.log_mel's (both framings), and the windows
and events equal Predictor's for a model that scores each window on its own."""

import numpy as np
import pytest

from jaxaudio.audio import frontend
from jaxaudio.inference.predictor import Predictor
from jaxaudio.inference.stream import Stream, _Frames  # pylint: disable=protected-access
from jaxaudio.models.registry import get_model


def _blocks(x, rng, most=9000):
  i = 0
  while i < len(x):
    n = int(rng.integers(1, most))
    yield x[i:i + n]
    i += n


@pytest.mark.parametrize("name", ["aisfx", "panns_cnn14", "musicnn_msd"])
def test_streamed_frames_are_the_files_frames_bit_for_bit(name):
  spec = get_model(name).spec
  rng = np.random.default_rng(0)
  x = (0.3 * rng.standard_normal(int(spec.sample_rate * 5.3))).astype(np.float32)
  frames = _Frames(spec)
  got = np.concatenate([frames.push(b) for b in _blocks(x, rng, 5000)] + [frames.close()])
  np.testing.assert_array_equal(got, frontend.log_mel(x, spec))


@pytest.mark.parametrize("name", ["aisfx", "panns_cnn14"])
def test_streamed_windows_and_events_are_the_predictors(name):
  spec = get_model(name).spec
  sr, rng = spec.sample_rate, np.random.default_rng(1)
  t = np.arange(int(sr * 23.3)) / sr
  x = 0.01 * rng.standard_normal(len(t))
  for a, b, f in ((2.0, 4.5, 1000), (9.0, 9.8, 3000), (15, 21, 500)):
    x[(t >= a) & (t < b)] += 0.5 * np.sin(2 * np.pi * f * t[(t >= a) & (t < b)])
  x = (x / np.abs(x).max()).astype(np.float32)
  weights = np.random.default_rng(2).standard_normal((spec.n_mels, 3))

  def model(mel):   # each window alone: the stream may batch windows differently
    z = np.asarray(mel, np.float64).mean(axis=1) @ weights
    return {"logits": (4 * (z - z.mean(axis=1, keepdims=True))).astype(np.float32)}

  meta = {"classes": ["a", "b", "c"], "multi_label": True, "frontend": spec.to_dict(),
          "settings": {"window_hop": 0.25, "loudness": "none"}}
  cuts = np.full(3, 0.6)
  predictor = Predictor(model, meta)
  offline = predictor.predict(predictor.featurize(waveform=x, rate=sr), "x", cuts)
  stream = Stream(model, meta, cuts, loudness="none")
  starts, probs, events = [], [], []
  for w, ended in stream.run(_blocks(x, rng)):
    starts += list(w.start)
    probs.append(w.probabilities)
    events += ended
  np.testing.assert_array_equal(starts, offline.window_start)
  np.testing.assert_allclose(np.concatenate(probs), offline.window_probabilities, atol=1e-6)
  assert sorted(events, key=lambda e: (e.start, e.label)) == offline.events
  assert offline.events and len(starts) >= 7
