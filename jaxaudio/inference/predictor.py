"""Predictions on new audio: clip probabilities, a window timeline and detected events.

A file is decoded, cleaned up and cut into windows exactly as the model's training data was
(its FrontendSpec and data settings travel in the exported model's meta.json), the windows
go through the model, and the clip's class probabilities are the mean of its windows'
(softmax for single-label models, sigmoid for multi-label ones) — the aggregation the
evaluation uses, so a test file gets the probabilities `evaluate` gives its clip.

Events, for long recordings: per class, consecutive windows whose probability reaches the
class threshold merge into one event (start, end, label, peak probability). Windows overlap,
so each window stands for the middle `hop` of its span (the part nearer its centre than any
other window's); an event runs from the first such part to the last, clipped to the file.

Only numpy and the featurisation code: the model is any callable mel -> {"logits", ...}.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from jaxaudio.audio.io import DEFAULT_MAX_SECONDS
from jaxaudio.audio.spec import FrontendSpec
from jaxaudio.models.outputs import in_batches, pow2, probabilities
from jaxaudio.audio import featurize
from jaxaudio.runtime.errors import AudioError


@dataclasses.dataclass
class Event:
  label: str
  start: float    # seconds into the file
  end: float
  peak: float     # highest window probability of the label inside the event


@dataclasses.dataclass
class Prediction:
  """One file's (or waveform's) prediction."""

  file: str
  classes: list[str]
  multi_label: bool
  probabilities: np.ndarray    # [classes], the clip-level mean of the window probabilities
  window_start: np.ndarray     # [windows] seconds into the file
  window_end: np.ndarray       # [windows] start + window length, clipped to the file
  window_probabilities: np.ndarray   # [windows, classes]
  seconds: float               # duration of the decoded audio
  events: list[Event] = dataclasses.field(default_factory=list)

  @property
  def label(self) -> str:
    return self.classes[int(np.argmax(self.probabilities))]

  def top_k(self, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-self.probabilities, kind="stable")[:k]
    return [(self.classes[i], float(self.probabilities[i])) for i in order]

  def labels_above(self, thresholds: np.ndarray) -> list[str]:
    """Classes whose clip probability reaches their threshold, most probable first."""
    order = np.argsort(-self.probabilities, kind="stable")
    return [self.classes[i] for i in order if self.probabilities[i] >= thresholds[i]]

  def to_dict(self, windows: bool = False, top_k: int = 0,
              thresholds: np.ndarray | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"file": self.file, "label": self.label,
                           "probabilities": {c: float(p) for c, p in
                                             zip(self.classes, self.probabilities)}}
    if top_k:
      out["top_k"] = [{"label": c, "probability": p} for c, p in self.top_k(top_k)]
    if thresholds is not None:
      out["labels"] = self.labels_above(thresholds)
    if windows:
      out["windows"] = [{"start": float(s), "end": float(e),
                         "probabilities": {c: float(p) for c, p in zip(self.classes, row)}}
                        for s, e, row in zip(self.window_start, self.window_end,
                                             self.window_probabilities)]
      out["events"] = [dataclasses.asdict(e) for e in self.events]
    return out


def detect_events(start: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                  thresholds: np.ndarray, window_seconds: float, hop_seconds: float,
                  seconds: float) -> list[Event]:
  """Runs of consecutive windows (starting at `start`, hop_seconds apart) at or above their
  class threshold, as events sorted by start (see the module docstring for the span each
  window stands for)."""
  if len(start) == 0:
    return []
  slack = max(window_seconds - hop_seconds, 0.0) / 2.0
  own_lo = start + slack
  own_lo[0] = start[0]
  own_hi = np.minimum(start + slack + hop_seconds, seconds)
  own_hi[-1] = min(start[-1] + window_seconds, seconds)
  events = []
  for j, name in enumerate(classes):
    above = probs[:, j] >= thresholds[j]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], above.astype(np.int8), [0]])))
    for lo, hi in zip(edges[::2], edges[1::2]):
      events.append(Event(str(name), float(own_lo[lo]), float(own_hi[hi - 1]),
                          float(probs[lo:hi, j].max())))
  return sorted(events, key=lambda e: (e.start, e.label))


class Predictor:
  """Predictions of one model on any number of files or waveforms.

  `model(mel [B, frames, mels]) -> {"logits": [B, classes], ...}`; `meta` is the exported
  model's meta.json (classes, multi_label, frontend, settings). `hop` (a fraction of a
  window) overrides the training data's window hop, e.g. for finer event times; then the
  clip probabilities are no longer those of the evaluation."""

  def __init__(self, model: Callable[[np.ndarray], dict[str, np.ndarray]], meta: dict[str, Any],
               hop: float | None = None, batch_size: int = 64):
    self.model, self.meta, self.batch_size = model, meta, batch_size
    self.classes = list(meta["classes"])
    self.multi_label = bool(meta["multi_label"])
    self.spec = FrontendSpec.from_dict(meta["frontend"])
    self.settings = featurize.Settings(**meta.get("settings", {}))
    if hop is not None:
      if not 0 < hop <= 1:
        raise ValueError(f"hop={hop} is not a fraction of a window in (0, 1]; pass e.g. 0.25.")
      self.settings = dataclasses.replace(self.settings, window_hop=float(hop))
    frames = self.spec.frames_per_window
    self.hop_seconds = (max(1, int(round(frames * self.settings.window_hop)))
                        * self.spec.hop_length / self.spec.sample_rate)

  def window_logits(self, windows: np.ndarray) -> np.ndarray:
    """[N, classes] logits of [N, frames, mels] windows, in fixed-size padded batches."""
    batch = min(self.batch_size, pow2(len(windows)))
    return in_batches(lambda x: self.model(x)["logits"], windows, batch, len(self.classes))

  def featurize(self, path: str | None = None, waveform: np.ndarray | None = None,
                rate: int = 0, max_seconds: float | None = DEFAULT_MAX_SECONDS
                ) -> featurize.Result:
    """Windows of a file or waveform as the training data was cut; AudioError if unusable
    or longer than `max_seconds` (refused before decoding)."""
    res = featurize.featurize(0, self.spec.to_dict(), self.settings, path=path,
                              waveform=waveform, rate=rate, max_seconds=max_seconds)
    if res.error:
      raise AudioError(res.error if path else res.error.replace("example 0", "the waveform"))
    return res

  def predict(self, res: featurize.Result, name: str,
              event_thresholds: np.ndarray | None = None) -> Prediction:
    """The prediction for featurised audio; events only when `event_thresholds` is given."""
    probs = probabilities(self.window_logits(res.windows), self.multi_label)
    start = res.offsets.astype(np.float64) + res.trimmed
    end = np.minimum(start + self.spec.window_seconds, res.seconds)
    pred = Prediction(file=name, classes=self.classes, multi_label=self.multi_label,
                      probabilities=probs.mean(axis=0), window_start=start, window_end=end,
                      window_probabilities=probs, seconds=res.seconds)
    if event_thresholds is not None:
      pred.events = detect_events(start, probs, self.classes, event_thresholds,
                                  self.spec.window_seconds, self.hop_seconds, res.seconds)
    return pred


