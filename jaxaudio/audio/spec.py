"""FrontendSpec: everything that turns a waveform into the log-mel a model was trained on.

Normalisation constants are part of the model, so the spec travels with converted weights,
prepared data and checkpoints; `fingerprint()` is what those compare before mixing them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from jaxaudio.runtime.errors import SpecMismatchError

FRAMINGS = ("essentia", "center_reflect")
WINDOWS = ("hann_symmetric", "hann_periodic")
MEL_FILTERS = ("essentia_htk_unit_sum", "slaney")
COMPRESSIONS = ("log10_shift_scale", "power_to_db")


@dataclasses.dataclass(frozen=True)
class FrontendSpec:
  """Log-mel frontend of one pretrained model.

  framing: "essentia" = Essentia FrameCutter (first frame centred on sample 0, zero padding,
    frames while the frame start lies inside the signal); "center_reflect" = torch.stft
    with center=True and reflect padding (1 + n // hop frames).
  compression: "log10_shift_scale" = log10(scale * x + shift) (Essentia shift_scale_log);
    "power_to_db" = 10 log10(max(x, amin)) - 10 log10(max(amin, ref)), no top_db.
  norm_min / norm_max: the model sees (logmel - norm_min) / (norm_max - norm_min).
  frames_per_window: the model's native input length in frames.
  """

  sample_rate: int
  n_fft: int
  hop_length: int
  n_mels: int
  fmin: float
  fmax: float
  framing: str
  window: str
  mel_filters: str
  compression: str
  frames_per_window: int
  power: float = 2.0
  log_scale: float = 1e4
  log_shift: float = 1.0
  db_ref: float = 1.0
  db_amin: float = 1e-10
  norm_min: float = 0.0
  norm_max: float = 1.0

  def __post_init__(self):
    for field, allowed in (("framing", FRAMINGS), ("window", WINDOWS),
                           ("mel_filters", MEL_FILTERS), ("compression", COMPRESSIONS)):
      value = getattr(self, field)
      if value not in allowed:
        raise ValueError(f"FrontendSpec.{field}={value!r} is not one of {allowed}.")
    if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
      raise ValueError(f"FrontendSpec needs 0 <= fmin < fmax <= sample_rate/2, got "
                       f"fmin={self.fmin}, fmax={self.fmax}, sample_rate={self.sample_rate}.")
    if self.norm_max <= self.norm_min:
      raise ValueError("FrontendSpec needs norm_max > norm_min.")

  @property
  def window_seconds(self) -> float:
    """Audio duration covered by one model window (frame hops, as the models count it)."""
    return self.frames_per_window * self.hop_length / self.sample_rate

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "FrontendSpec":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"FrontendSpec does not know the keys {unknown}; the data or checkpoint "
                       "was written by a newer jaxaudio.")
    return cls(**d)

  def fingerprint(self) -> str:
    """Short stable hash of every field; equal fingerprints mean identical features."""
    blob = json.dumps(self.to_dict(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_same_spec(expected: FrontendSpec, found: FrontendSpec, *, what: str, model: str) -> None:
  """Refuse features or weights made with another frontend, naming both and the fix."""
  if expected == found:
    return
  diff = {k: (v, found.to_dict()[k]) for k, v in expected.to_dict().items()
          if found.to_dict()[k] != v}
  details = ", ".join(f"{k}: model {a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
  raise SpecMismatchError(
      f"{what} was made with FrontendSpec {found.fingerprint()} but model '{model}' expects "
      f"{expected.fingerprint()} ({details}); prepare the data again for this model.")
