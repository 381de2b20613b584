"""A fine-tuned model as a standalone artifact: jax.export StableHLO + weights + metadata.

  python -m jaxaudio.exported --workdir=RUN --out=DIR      # write
  model = jaxaudio.exported.load(DIR); out = model(mel)     # use: jax + numpy only

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
import shutil
from typing import Any

import jax
import numpy as np

from jaxaudio import inference

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

  def predictor(self, hop: float | None = None, batch_size: int = 64) -> inference.Predictor:
    """An inference.Predictor of this model (files and waveforms cut as in training)."""
    return inference.Predictor(self, self.meta, hop=hop, batch_size=batch_size)

  def predict(self, audio: str | np.ndarray, sr: int | None = None, hop: float | None = None,
              threshold: float | str | None = None) -> inference.Prediction:
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
      cuts = inference.thresholds_array(predictor.classes, self.thresholds(threshold))
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

  def embeddings(self, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """[N, D] embeddings of [N, frames, mels] windows, in padded batches of `batch_size`."""
    return inference.in_batches(lambda x: self(x)["embedding"], windows, batch_size,
                                int(self.meta["embedding_dim"]))


def _sha256(weights: list[np.ndarray]) -> str:
  h = hashlib.sha256()
  for w in weights:
    h.update(f"{w.dtype}|{w.shape}".encode())
    h.update(np.ascontiguousarray(w).tobytes())
  return h.hexdigest()


def export_run(workdir: str, out_dir: str, step: int | str = "best",
               thresholds: dict[str, float] | None = None) -> dict[str, Any]:
  """Export the run's checkpoint `step` ("best", "latest", a number, or "start": the weights
  the run started from, e.g. to compare search before and after fine-tuning); returns meta.
  `thresholds` ({class: probability}, chosen on validation) go into meta.json for
  predict(threshold="validation")."""
  # pylint: disable=import-outside-toplevel
  from jaxaudio.data.prepare import settings_from_config
  from jaxaudio.rundir import open_run, starting_variables
  run = open_run(workdir, "best" if step == "start" else step)
  if step == "start":
    run.variables, run.step = starting_variables(run)[1], 0
  leaves, treedef = jax.tree_util.tree_flatten(run.variables)
  weights = [np.asarray(x) for x in leaves]

  def forward(flat, mel):
    out = run.model.apply(jax.tree_util.tree_unflatten(treedef, flat), mel, train=False)
    return out["embedding"], out["logits"]

  spec = run.info.spec
  (batch,) = jax.export.symbolic_shape("batch")
  args = ([jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
          jax.ShapeDtypeStruct((batch, spec.frames_per_window, spec.n_mels), np.float32))
  exported = jax.export.export(jax.jit(forward))(*args)
  settings = dataclasses.asdict(settings_from_config(run.cfg.data))
  meta = {"format_version": FORMAT_VERSION, "model": run.info.name, "classes": run.classes,
          "multi_label": run.multi_label, "frontend": spec.to_dict(), "settings": settings,
          "embedding_dim": int(exported.out_avals[0].shape[-1]),
          "weights_sha256": _sha256(weights), "source_workdir": run.workdir, "step": run.step}
  if thresholds is not None:
    meta["thresholds"] = dict(thresholds)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "model.jaxexport"), "wb") as f:
    f.write(exported.serialize())
  np.savez(os.path.join(out_dir, "weights.npz"), **{f"w{i:05d}": w for i, w in enumerate(weights)})
  with open(os.path.join(out_dir, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def for_run(workdir: str, step: int | str = "best") -> str:
  """WORKDIR/export/step_N (or start) for the run's checkpoint `step`, exported on first
  use."""
  from jaxaudio.rundir import resolve_step  # pylint: disable=import-outside-toplevel
  name = "start" if step == "start" else f"step_{resolve_step(workdir, step)}"
  out = os.path.join(os.path.abspath(workdir), "export", name)
  try:
    load(out)
    return out
  except ValueError:
    pass
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  export_run(workdir, tmp, step)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  return out


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
  if _sha256(weights) != meta.get("weights_sha256"):
    raise ValueError(f"{files['weights.npz']} does not match the sha256 in meta.json; the "
                     "artifact is damaged or mixed with another export: export it again.")
  with open(files["model.jaxexport"], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return ExportedModel(exported, weights, meta)


def main(argv):  # pragma: no cover - thin CLI
  del argv
  # The CLI may load the training code; `load` and ExportedModel must not (see above).
  # pylint: disable=import-outside-toplevel
  from jaxaudio.errors import DataError
  from jaxaudio.evaluate import thresholds as validation_thresholds
  from jaxaudio.rundir import step_flag
  step = step_flag(_STEP.value)
  cuts = None
  if step != "start":
    try:
      cuts = validation_thresholds.as_mapping(validation_thresholds.for_run(_WORKDIR.value,
                                                                            step))
    except DataError as err:
      print(f"note: {err}")
  meta = export_run(_WORKDIR.value, _OUT.value, step, cuts)
  print(json.dumps({k: meta[k] for k in ("model", "step", "embedding_dim", "weights_sha256")}))
  print(f"exported: {os.path.abspath(_OUT.value)}")
  return 0


if __name__ == "__main__":
  from absl import flags  # pylint: disable=import-outside-toplevel
  from jaxaudio import cli  # pylint: disable=import-outside-toplevel
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  _OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
  _STEP = flags.DEFINE_string("step", "best", "Checkpoint: best, latest, a step number, or "
                              "start (the weights the run started from).")
  cli.run(main)
