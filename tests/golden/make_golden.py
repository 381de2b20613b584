"""Produce every golden file under tests/golden/ from the original implementations.

Runs in its own environment, never as a jaxaudio dependency (see tests/golden/README.md):
  python -m venv .golden
  .golden/bin/pip install torch==2.13.0 essentia==2.1b6.dev1389 torchlibrosa==0.1.0 \
      librosa==0.11.0 soundfile tqdm numpy matplotlib
  .golden/bin/pip install --no-deps aisfx==0.1.2 panns_inference==0.1.1
  .golden/bin/python tests/golden/make_golden.py

Writes: audio/*.flac (synthesised inputs), aisfx_frontend.npz (Essentia-path log-mels, via
aisfx's own compute_spectrogram), aisfx_embeddings.npz (the real pretrained aiSFX model on 4
inputs), panns_frontend.npz (torchlibrosa log-mels), panns_<arch>.npz (official Cnn14 /
Cnn10 / Cnn6 in torch with seeded random weights from random_weights.py), tiny_*.pth
(reader fixtures) and measurements.json (loader level and resampling differences).
References are computed in float64.
"""

import json
import os
import sys

import numpy as np
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from random_weights import random_state_dict  # noqa: E402  pylint: disable=wrong-import-position

AUDIO = os.path.join(HERE, "audio")


def synth(kind: str, sr: int, seconds: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  if kind == "tone":      # harmonic tone with vibrato over pink-ish noise
    f0 = 330 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6))
    x += 0.02 * np.cumsum(rng.standard_normal(len(t))) / np.sqrt(sr)
  elif kind == "siren":   # rising and falling sweep
    f = 600 + 500 * np.sin(2 * np.pi * 0.7 * t)
    x = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.01 * rng.standard_normal(len(t))
  else:                   # knocks: decaying noise bursts
    x = 0.003 * rng.standard_normal(len(t))
    for start in rng.uniform(0, seconds - 0.2, 6):
      i = int(start * sr)
      n = int(0.15 * sr)
      x[i:i + n] += 0.6 * rng.standard_normal(n) * np.exp(-np.arange(n) / (0.02 * sr))
  return np.clip(x, -0.99, 0.99).astype(np.float32)


def write_audio():
  os.makedirs(AUDIO, exist_ok=True)
  files = {}
  for i, kind in enumerate(("tone", "siren", "knocks")):
    p = os.path.join(AUDIO, f"{kind}_44k.flac")
    sf.write(p, synth(kind, 44100, 2.6, i), 44100, subtype="PCM_16")
    files[f"{kind}_44k"] = p
  for i, kind in enumerate(("tone", "knocks")):
    p = os.path.join(AUDIO, f"{kind}_32k.flac")
    sf.write(p, synth(kind, 32000, 3.0, 10 + i), 32000, subtype="PCM_16")
    files[f"{kind}_32k"] = p
  for sr in (22050, 48000):  # for the resampling measurement
    p = os.path.join(AUDIO, f"tone_{sr // 1000}k.flac")
    sf.write(p, synth("tone", sr, 2.6, 0), sr, subtype="PCM_16")
    files[f"tone_{sr}"] = p
  return files


def aisfx_goldens(files, measurements):
  from aisfx.inference import get_path_modelWeights, load_bestModel  # the package's own code
  from aisfx.preprocessing import spectrogram_normalize
  from aisfx.spectrogram.spectrogram_essentia import compute_spectrogram
  import essentia.standard as es

  def spectrogram(path):
    return compute_spectrogram(filename=path, sr=44100.0, block_size=2048, hop_size=1024,
                               n_mels=96, f_min=0.0, f_max=22050.0)

  mels = {}
  for key in ("tone_44k", "siren_44k", "knocks_44k"):
    mels[key] = spectrogram_normalize(spectrogram(files[key]), spec_norm="original")
  np.savez_compressed(os.path.join(HERE, "aisfx_frontend.npz"),
                      **{k: v.astype(np.float32) for k, v in mels.items()})

  # Level: what Essentia's EasyLoader does to a file already at 44.1 kHz.
  loaded = es.EasyLoader(filename=files["tone_44k"], sampleRate=44100)()
  raw, _ = sf.read(files["tone_44k"], dtype="float32")
  measurements["essentia_easyloader_gain"] = float(np.dot(loaded, raw) / np.dot(raw, raw))
  # Resampled inputs: Essentia's reference log-mel for files at other rates (the test
  # measures jaxaudio's soxr path against these).
  resampled = {f"tone_{sr}": spectrogram_normalize(spectrogram(files[f"tone_{sr}"]),
                                                   spec_norm="original").astype(np.float32)
               for sr in (22050, 48000)}
  np.savez_compressed(os.path.join(HERE, "aisfx_frontend_resampled.npz"), **resampled)

  # aisfx.inference.load_weights calls torch.load without weights_only=False, which torch
  # >= 2.6 refuses for this file; load it the same way with the flag (trusted source).
  weights, ds_dict = torch.load(get_path_modelWeights(), map_location="cpu", weights_only=False)
  model = load_bestModel(weights, ds_dict, "cpu").double().eval()
  rng = np.random.default_rng(2022)
  inputs = np.stack([mels["tone_44k"][:100], mels["siren_44k"][:100], mels["knocks_44k"][:100],
                     rng.uniform(0.0, 0.8, (100, 96))]).astype(np.float32)
  with torch.no_grad():
    emb = model.get_embedding(torch.from_numpy(inputs).double()).numpy()
  n_params = sum(p.numel() for p in model.embedding_net.parameters())
  np.savez_compressed(os.path.join(HERE, "aisfx_embeddings.npz"), inputs=inputs, embeddings=emb,
                      param_count=n_params)


class ConvBlock5x5(nn.Module):
  """PANNs' single 5x5 conv block (Cnn6): conv (no bias) -> BN -> ReLU -> pool."""

  def __init__(self, in_channels, out_channels):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=(5, 5), stride=(1, 1),
                           padding=(2, 2), bias=False)
    self.bn1 = nn.BatchNorm2d(out_channels)

  def forward(self, x, pool_size=(2, 2), pool_type="avg"):
    x = F.relu_(self.bn1(self.conv1(x)))
    return F.avg_pool2d(x, kernel_size=pool_size)


class SmallPanns(nn.Module):
  """Cnn10 (ConvBlock x4) and Cnn6 (ConvBlock5x5 x4) as in the PANNs paper: bn0, four blocks
  with 2x2 average pooling, mean over mels, max + mean over time, fc1 512, fc_audioset."""

  def __init__(self, block, classes_num=527):
    super().__init__()
    self.bn0 = nn.BatchNorm2d(64)
    for i, (cin, cout) in enumerate(((1, 64), (64, 128), (128, 256), (256, 512)), start=1):
      setattr(self, f"conv_block{i}", block(in_channels=cin, out_channels=cout))
    self.fc1 = nn.Linear(512, 512, bias=True)
    self.fc_audioset = nn.Linear(512, classes_num, bias=True)

  def forward_logmel(self, x):
    x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
    for i in range(1, 5):
      x = getattr(self, f"conv_block{i}")(x, pool_size=(2, 2), pool_type="avg")
    x = torch.mean(x, dim=3)
    x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
    emb = F.relu_(self.fc1(x))
    return emb, self.fc_audioset(emb)


def cnn14_forward_logmel(model, x):
  """panns_inference Cnn14.forward from the log-mel on (eval mode: dropout is identity)."""
  x = model.bn0(x.transpose(1, 3)).transpose(1, 3)
  for i in range(1, 7):
    x = getattr(model, f"conv_block{i}")(x, pool_size=(2, 2) if i < 6 else (1, 1),
                                          pool_type="avg")
  x = torch.mean(x, dim=3)
  x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
  emb = F.relu_(model.fc1(x))
  return emb, model.fc_audioset(emb)


def panns_goldens(files, seed=1234):
  from panns_inference.models import Cnn14, ConvBlock

  cnn14 = Cnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50,
                fmax=14000, classes_num=527)
  # The official frontend modules, fed the synthesised waveforms.
  waves = np.stack([sf.read(files[k], dtype="float32")[0] for k in ("tone_32k", "knocks_32k")])
  cnn14.spectrogram_extractor.double()
  cnn14.logmel_extractor.double()
  with torch.no_grad():
    logmel = cnn14.logmel_extractor(cnn14.spectrogram_extractor(
        torch.from_numpy(waves).double())).numpy()[:, 0]   # [B, T, 64]
  np.savez_compressed(os.path.join(HERE, "panns_frontend.npz"), tone_32k=logmel[0],
                      knocks_32k=logmel[1])
  models = {"cnn14": (cnn14, cnn14_forward_logmel),
            "cnn10": (SmallPanns(ConvBlock), SmallPanns.forward_logmel),
            "cnn6": (SmallPanns(ConvBlock5x5), SmallPanns.forward_logmel)}
  for arch, (model, forward) in models.items():
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()
              if not k.startswith(("spectrogram_extractor", "logmel_extractor"))
              and not k.endswith("num_batches_tracked")}
    rand = random_state_dict(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in rand.items()}, strict=False)
    model = model.double().eval()
    with torch.no_grad():
      emb, logits = forward(model, torch.from_numpy(logmel)[:, None])
    n_params = sum(p.numel() for name, p in model.named_parameters()
                   if not name.startswith(("spectrogram_extractor", "logmel_extractor")))
    np.savez_compressed(os.path.join(HERE, f"panns_{arch}.npz"), inputs=logmel.astype(np.float32),
                        embedding=emb.numpy(), logits=logits.numpy(), param_count=n_params,
                        seed=seed)


def reader_fixtures():
  """Small .pth files in both the zip and the legacy format, with non-contiguous views."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  state = {"conv.weight": torch.randn(3, 2, 3, 3, generator=g),
           "transposed": base.t(),                      # strided view of a shared storage
           "row": base[1],                              # offset view of the same storage
           "half": torch.randn(5, generator=g).half(),
           "steps": torch.tensor(7, dtype=torch.int64),
           "flags": torch.tensor([True, False, True])}
  obj = {"model": state, "epoch": 3, "meta": ("x", 1.5)}
  torch.save(obj, os.path.join(HERE, "tiny_zip.pth"))
  torch.save(obj, os.path.join(HERE, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)
  np.savez(os.path.join(HERE, "tiny_expected.npz"),
           **{k: v.numpy() for k, v in state.items()})


def main():
  files = write_audio()
  measurements = {}
  aisfx_goldens(files, measurements)
  panns_goldens(files)
  reader_fixtures()
  measurements["torch"] = torch.__version__
  with open(os.path.join(HERE, "measurements.json"), "w") as f:
    json.dump(measurements, f, indent=2, sort_keys=True)
  print(json.dumps(measurements, indent=2))


if __name__ == "__main__":
  main()
