"""A fine-tuned model as a standalone artifact: jax.export StableHLO + weights + metadata.

  python -m jaxaudio.exported --workdir=RUN --out=DIR                  # write (jaxaudio.exports.stablehlo)
  model = jaxaudio.inference.exported.load(DIR); out = model(mel)      # use: jax + numpy only

DIR holds `model.jaxexport` (the serialized jax.export.Exported of mel [batch, frames, mels]
-> embedding and logits, batch size symbolic, weights as arguments), `weights.npz` (the
weights in argument order) and `meta.json` (model name, classes, FrontendSpec, the data
settings the model was trained with, embedding size, sha256 of the weights). Loading needs
neither Flax nor the training code; turn audio into `mel` windows with
jaxaudio.audio.frontend and the FrontendSpec in meta.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterable, Iterator

import jax
import numpy as np

from jaxaudio.models import outputs
from jaxaudio.inference.predictor import Event, Prediction, Predictor
from jaxaudio.inference.stream import Stream

FORMAT_VERSION = 1


@dataclasses.dataclass
class ExportedModel:
  exported: Any                 # jax.export.Exported
  weights: list[np.ndarray]
  meta: dict[str, Any]

  def __call__(self, mel: np.ndarray) -> dict[str, np.ndarray]:
    """{"embedding": [B, D], "logits": [B, classes]} for normalised log-mel windows."""
    emb, logits = self.exported.call(self.weights, np.asarray(mel, np.float32))
    return {"embedding": np.asarray(emb), "logits": np.asarray(logits)}

  def predictor(self, hop: float | None = None, batch_size: int = 64) -> Predictor:
    """A Predictor of this model (files and waveforms cut as in training)."""
    return Predictor(self, self.meta, hop=hop, batch_size=batch_size)

  def predict(self, audio: str | np.ndarray, sr: int | None = None, hop: float | None = None,
              threshold: float | str | None = None) -> Prediction:
    """Class probabilities of an audio file (path) or a mono waveform (array with `sr`):
    per window, per clip (their mean, as the evaluation aggregates) and, with `threshold`
    (a number, or "validation" for the per-class thresholds stored in meta.json), the
    events where a class stays at or above it."""
    predictor = self.predictor(hop)
    if isinstance(audio, str):
      res, name = predictor.featurize(path=audio), audio
    else:
      if not sr:
        raise ValueError("predict(waveform) needs its sample rate: predict(x, sr=16000).")
      res, name = predictor.featurize(waveform=audio, rate=int(sr)), "<waveform>"
    cuts = None
    if threshold is not None:
      cuts = outputs.thresholds_array(predictor.classes, self.thresholds(threshold))
    return predictor.predict(res, name, cuts)

  def thresholds(self, threshold: float | str) -> float | dict[str, float]:
    """A number as given, or for "validation" the per-class thresholds in meta.json."""
    if threshold != "validation":
      return float(threshold)
    if "thresholds" not in self.meta:
      raise ValueError("this exported model carries no validation thresholds; export it with "
                       "python -m jaxaudio.exported from a run with a validation split, or "
                       "pass a number.")
    return dict(self.meta["thresholds"])

  def live(self, threshold: float | str | None = None, hop: float | None = None,
           loudness: str = "running", batch_size: int = 64) -> Stream:
    """A live Stream of this model: push PCM blocks at the model's rate, get the windows that
    became complete and the events that ended (jaxaudio/inference/stream.py). `threshold`:
    a probability, "validation" (meta.json's per-class thresholds) or None (0.5)."""
    classes = list(self.meta["classes"])
    cuts = outputs.thresholds_array(classes, 0.5 if threshold is None
                                    else self.thresholds(threshold))
    return Stream(self, self.meta, cuts, hop=hop, loudness=loudness, batch_size=batch_size)

  def stream(self, blocks: Iterable[np.ndarray], threshold: float | str | None = None,
             hop: float | None = None, loudness: str = "running") -> Iterator[Event]:
    """Events of a stream of mono float32 blocks at the model's rate, each as soon as it
    ends (e.g. blocks from jaxaudio.inference.stream.pcm_blocks(sys.stdin.buffer, ...))."""
    for _, ended in self.live(threshold, hop, loudness).run(blocks):
      yield from ended

  def embeddings(self, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """[N, D] embeddings of [N, frames, mels] windows, in padded batches of `batch_size`."""
    return outputs.in_batches(lambda x: self(x)["embedding"], windows, batch_size,
                                int(self.meta["embedding_dim"]))


def weights_sha256(weights: list[np.ndarray]) -> str:
  h = hashlib.sha256()
  for w in weights:
    h.update(f"{w.dtype}|{w.shape}".encode())
    h.update(np.ascontiguousarray(w).tobytes())
  return h.hexdigest()


def load(path: str) -> ExportedModel:
  """Load an exported model; a missing, partial or altered artifact is one clear error."""
  files = {n: os.path.join(path, n) for n in ("model.jaxexport", "weights.npz", "meta.json")}
  missing = [n for n, p in files.items() if not os.path.exists(p)]
  if missing:
    raise ValueError(f"{path} is not an exported jaxaudio model (missing {', '.join(missing)});"
                     " write one with python -m jaxaudio.exported --workdir=RUN --out=DIR.")
  with open(files["meta.json"]) as f:
    meta = json.load(f)
  with np.load(files["weights.npz"]) as z:
    weights = [z[k] for k in sorted(z.files)]
  if weights_sha256(weights) != meta.get("weights_sha256"):
    raise ValueError(f"{files['weights.npz']} does not match the sha256 in meta.json; the "
                     "artifact is damaged or mixed with another export: export it again.")
  with open(files["model.jaxexport"], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return ExportedModel(exported, weights, meta)
