"""Golden files for the musicnn family, from the original stored TF graphs and librosa.

Runs in jaxaudio's own environment (TensorFlow and librosa are its dependencies) and never
imports the `musicnn` package (it pins an old TensorFlow and disables eager execution on
import): the four checkpoints come from the musicnn 0.1.0 wheel through
jaxaudio.weights.sources, which checks their sha256.

  python tests/golden/make_golden_musicnn.py

Writes:
  audio/music_16k.flac   synthesised music (chords, bass, drums, a loud ending), 16 kHz
  musicnn_frontend.npz   librosa.feature.melspectrogram as the package calls it (reflect
                         padding, the librosa < 0.10 default it was trained with), then
                         log10(10000 x + 1) in float32; and how many values the package's
                         float16 log turns into inf on the same file
  musicnn_models.npz     3 inputs (two real 187-frame patches of that log-mel, one random) and,
                         per model, the taggram (model/Sigmoid) and the embedding (musicnn's
                         penultimate layer, vgg's pool5 flattened), plus musicnn's max and mean
                         pools over time of the mid end (model/Max, model/moments/mean)
The stored graphs are TF 1.11/1.12 training graphs; they import into TF 2.x once every node's
`_output_shapes` attribute is deleted. The training flag model/Placeholder_2 is fed False.
"""

import os

import librosa
import numpy as np
import soundfile as sf
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from jaxaudio.weights.sources import musicnn_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
SR = 16000
MODELS = {"musicnn_mtt": "MTT_musicnn", "musicnn_msd": "MSD_musicnn", "vgg_mtt": "MTT_vgg",
          "vgg_msd": "MSD_vgg"}
FETCH = {
    "musicnn": {"taggram": "model/Sigmoid:0",
                "embedding": "model/batch_normalization_10/batchnorm/add_1:0",
                "max_pool": "model/Max:0", "mean_pool": "model/moments/mean:0"},
    "vgg": {"taggram": "model/Sigmoid:0", "embedding": "model/max_pooling2d_4/MaxPool:0"},
}


def synth_music(seconds: float = 7.0, seed: int = 7) -> np.ndarray:
  """Chords (I-vi-IV-V), a bass line, kick / hi-hat, and a last second driven loud."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SR)) / SR
  x = np.zeros_like(t)
  roots = (261.63, 220.0, 174.61, 196.0)
  for i, root in enumerate(roots * 2):
    seg = (t >= i * 0.875) & (t < (i + 1) * 0.875)
    for ratio in (1.0, 1.26, 1.5):
      x[seg] += 0.12 * np.sin(2 * np.pi * root * ratio * t[seg])
    x[seg] += 0.2 * np.sin(2 * np.pi * root / 2 * t[seg])
  for beat in np.arange(0, seconds, 0.4375):
    i = int(beat * SR)
    n = min(int(0.12 * SR), len(x) - i)
    x[i:i + n] += 0.5 * np.sin(2 * np.pi * 55 * np.arange(n) / SR) * np.exp(-np.arange(n) / 800)
    j = i + int(0.21875 * SR)
    m = min(int(0.03 * SR), max(0, len(x) - j))
    x[j:j + m] += 0.08 * rng.standard_normal(m) * np.exp(-np.arange(m) / 150)
  x[-SR:] *= 2.2  # loud: mel power well above float16's 6.55 limit once scaled by 1e4
  return np.clip(x, -0.99, 0.99).astype(np.float32)


def mel_power(y: np.ndarray) -> np.ndarray:
  return librosa.feature.melspectrogram(y=y, sr=SR, hop_length=256, n_fft=512, n_mels=96,
                                        pad_mode="reflect").T


def run_graph(folder: str, x: np.ndarray, fetch: dict[str, str]) -> dict[str, np.ndarray]:
  meta = meta_graph_pb2.MetaGraphDef()
  with open(os.path.join(folder, ".meta"), "rb") as f:
    meta.ParseFromString(f.read())
  for node in meta.graph_def.node:
    node.attr.pop("_output_shapes", None)
  graph = tf.Graph()
  with graph.as_default():
    saver = tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
    with tf.compat.v1.Session(graph=graph) as sess:
      saver.restore(sess, os.path.join(folder, ""))
      out = sess.run(fetch, {"model/Placeholder:0": x, "model/Placeholder_2:0": False})
  return {k: np.asarray(v, np.float32).reshape(len(x), -1) for k, v in out.items()}


def main():
  audio = synth_music()
  path = os.path.join(HERE, "audio", "music_16k.flac")
  sf.write(path, audio, SR, subtype="PCM_16")
  y, _ = librosa.load(path, sr=SR)  # what the package does with a file at its rate
  power = mel_power(y)
  logmel = np.log10(np.float32(10000) * power + np.float32(1)).astype(np.float32)
  with np.errstate(over="ignore"):
    float16 = np.log10(10000 * power.astype(np.float16) + 1)
  np.savez_compressed(os.path.join(HERE, "musicnn_frontend.npz"), music_16k=logmel,
                      float16_infs=np.int64(np.isinf(float16).sum()))
  rng = np.random.default_rng(0)
  inputs = np.stack([logmel[:187], logmel[187:374],
                     rng.uniform(0.0, 4.0, (187, 96))]).astype(np.float32)
  out = {"inputs": inputs}
  for name, member in MODELS.items():
    fetch = FETCH[name.split("_")[0]]
    for key, value in run_graph(musicnn_checkpoint(member), inputs, fetch).items():
      out[f"{name}/{key}"] = value
  np.savez_compressed(os.path.join(HERE, "musicnn_models.npz"), **out)
  print(f"log-mel {logmel.shape}, float16 infs {int(np.isinf(float16).sum())}; "
        + ", ".join(f"{k} {v.shape}" for k, v in out.items()))


if __name__ == "__main__":
  main()
