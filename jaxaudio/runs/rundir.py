"""Open a training run's workdir: its config, label map and one checkpoint's model.

Evaluation, search and export start from here. The checkpoint is restored into the layout
of the stage that wrote it (the config's probe/unfreeze plan says which), and the model is
built in evaluation form (BatchNorm on running averages, no dropout).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxaudio.runs import configs
from jaxaudio.runtime.errors import CheckpointError, ConfigError
from jaxaudio.models.head import EmbeddingClassifier
from jaxaudio.models.registry import ModelInfo, finetune_backbone, get_model
from jaxaudio.train import checkpointing, factory, optimizer, stages
from jaxaudio.weights.pretrained import initial_variables


@dataclasses.dataclass
class TrainedRun:
  workdir: str
  cfg: ml_collections.ConfigDict
  info: ModelInfo
  classes: list[str]
  multi_label: bool
  step: int
  model: EmbeddingClassifier
  variables: dict[str, Any]       # {"params", "batch_stats"} as numpy arrays

  def weights_sha256(self) -> str:
    """Hash of the checkpoint's weights (paths, dtypes, shapes, bytes), for provenance."""
    h = hashlib.sha256()
    for kp, leaf in jax.tree_util.tree_flatten_with_path(self.variables)[0]:
      leaf = np.ascontiguousarray(leaf)
      h.update(f"{jax.tree_util.keystr(kp)}|{leaf.dtype}|{leaf.shape}".encode())
      h.update(leaf.tobytes())
    return h.hexdigest()


def _read_json(workdir: str, name: str) -> Any:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir} has no {name}; pass the --workdir of a "
                          "`python -m jaxaudio.main` run.")
  with open(path) as f:
    return json.load(f)


def _resolve(mgr, workdir: str, step: int | str) -> int:
  latest = mgr.latest_step()
  if latest is None:
    raise CheckpointError(f"{workdir} has no checkpoint yet; train first (python -m "
                          "jaxaudio.main --workdir=...).")
  if step == "best":
    meta = mgr.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    step = int(meta["best_step"]) if int(meta["best_step"]) > 0 else latest
  elif step == "latest":
    step = latest
  step = int(step)
  if step not in mgr.all_steps():
    raise CheckpointError(f"{workdir} has no checkpoint at step {step} (it keeps "
                          f"{sorted(mgr.all_steps())}).")
  return step


def step_flag(value: str, start: bool = True) -> int | str:
  """A --step flag: best, latest, a checkpoint number, or (where `start`) start."""
  names = ("best", "latest", "start") if start else ("best", "latest")
  if value.isdigit():
    return int(value)
  if value in names:
    return value
  raise ConfigError(f"--step={value} is not {', '.join(names)} or a checkpoint number.")


def resolve_step(workdir: str, step: int | str = "best") -> int:
  """The checkpoint step that "best", "latest" or a number names, without loading weights."""
  workdir = os.path.abspath(workdir)
  cfg = configs.from_saved(_read_json(workdir, "config.json"))
  mgr = checkpointing.manager(workdir, int(cfg.train.checkpoint_keep))
  try:
    return _resolve(mgr, workdir, step)
  finally:
    mgr.close()


def open_run(workdir: str, step: int | str = "best") -> TrainedRun:
  """The run in `workdir` at checkpoint `step` ("best" by validation, "latest", or a step)."""
  workdir = os.path.abspath(workdir)
  cfg = configs.from_saved(_read_json(workdir, "config.json"))
  labels = _read_json(workdir, "labels.json")
  info = get_model(cfg.model.name)
  mgr = checkpointing.manager(workdir, int(cfg.train.checkpoint_keep))
  step = _resolve(mgr, workdir, step)
  plan = stages.plan(cfg.train)
  widths = tuple(cfg.model.widths) or None
  setup = factory.build(info, len(labels["classes"]), cfg.train, widths=widths, plan=plan,
                        stage=plan.index(max(step - 1, 0)))
  state, _ = checkpointing.restore(mgr, step, setup.state)
  mgr.close()
  model = EmbeddingClassifier(finetune_backbone(info, widths=widths), len(labels["classes"]))
  return TrainedRun(workdir=workdir, cfg=cfg, info=info, classes=list(labels["classes"]),
                    multi_label=bool(labels["multi_label"]), step=step, model=model,
                    variables={"params": optimizer.evaluation_params(state.params,
                                                                     state.opt_state),
                               "batch_stats": state.batch_stats})


def starting_variables(run: TrainedRun) -> tuple[str, Any]:
  """The weights the run started from: its pretrained backbone (or seeded scratch init)."""
  pretrained = initial_variables(run.cfg, run.info, has_checkpoint=False)
  plan = stages.plan(run.cfg.train)
  setup = factory.build(run.info, len(run.classes), run.cfg.train, pretrained=pretrained,
                        widths=tuple(run.cfg.model.widths) or None, plan=plan)
  name = "pretrained" if pretrained is not None else f"{run.cfg.model.init} init"
  return name, {"params": setup.state.params, "batch_stats": setup.state.batch_stats}
