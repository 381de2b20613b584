"""Write a run's checkpoint as the standalone jax.export artefact that jaxaudio.inference.exported loads.

  python -m jaxaudio.exported --workdir=RUN --out=DIR

This side needs the training code (the run's config, model and checkpoint); the artefact it
writes needs only JAX and numpy to run (see jaxaudio/inference/exported.py for its contents).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from jaxaudio.data.prepare import settings_from_config
from jaxaudio.inference import exported
from jaxaudio.inference.exported import FORMAT_VERSION, weights_sha256
from jaxaudio.runs.rundir import open_run, resolve_step, starting_variables


def export_run(workdir: str, out_dir: str, step: int | str = "best",
               thresholds: dict[str, float] | None = None) -> dict[str, Any]:
  """Export the run's checkpoint `step` ("best", "latest", a number, or "start": the weights
  the run started from, e.g. to compare search before and after fine-tuning); returns meta.
  `thresholds` ({class: probability}, chosen on validation) go into meta.json for
  predict(threshold="validation")."""
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
          "weights_sha256": weights_sha256(weights), "source_workdir": run.workdir, "step": run.step}
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
  name = "start" if step == "start" else f"step_{resolve_step(workdir, step)}"
  out = os.path.join(os.path.abspath(workdir), "export", name)
  try:
    exported.load(out)
    return out
  except ValueError:
    pass
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  export_run(workdir, tmp, step)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  return out
