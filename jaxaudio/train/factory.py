"""Assemble what a run trains: classifier, optimizer, initial state, frozen layer groups."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxaudio.models.head import EmbeddingClassifier
from jaxaudio.models.init import init_variables
from jaxaudio.models.registry import ModelInfo, finetune_backbone
from jaxaudio.train import optimizer, stages
from jaxaudio.train.state import TrainState
from jaxaudio.weights.merge import merge_pretrained


@dataclasses.dataclass
class Setup:
  model: EmbeddingClassifier
  tx: optax.GradientTransformation
  state: TrainState
  trainable: Any                      # pytree of bools like params
  assignment: dict[str, str]          # parameter path -> group
  schedules: dict[str, optax.Schedule]
  frozen_groups: tuple[str, ...]      # backbone layer groups fully frozen
  group_starts: dict[str, int] = dataclasses.field(default_factory=dict)

  def learning_rates(self, step: int) -> dict[str, float]:
    """Each training group's learning rate for the update at `step` (for the log)."""
    return {g: float(s(max(step - self.group_starts.get(g, 0), 0)))
            for g, s in self.schedules.items()}


def _stage(info: ModelInfo, num_classes: int, train_cfg, params: Any, rules, group_starts,
           widths, bn_axis_name):
  """Optimizer and model for one parameter-group assignment (fully frozen blocks run BN on
  running averages behind a stop_gradient)."""
  dtype = jnp.bfloat16 if train_cfg.mixed_precision else jnp.float32
  tx, assignment, schedules = optimizer.make_optimizer(params, train_cfg, rules, group_starts)
  frozen = optimizer.frozen_layer_groups(params, assignment, info.layer_groups)
  model = EmbeddingClassifier(
      finetune_backbone(info, widths=widths, frozen=frozen, dtype=dtype,
                        bn_axis_name=bn_axis_name,
                        running_bn=info.layer_groups if train_cfg.bn == "running" else ()),
      num_classes, dropout=float(train_cfg.head_dropout))
  return dict(model=model, tx=tx, trainable=optimizer.trainable_mask(params, assignment),
              assignment=assignment, schedules=schedules, frozen_groups=frozen,
              group_starts=dict(group_starts or {}))


def build(info: ModelInfo, num_classes: int, train_cfg, pretrained: dict[str, Any] | None = None,
          widths=None, bn_axis_name: str | None = None, frames: int | None = None,
          plan: stages.Plan | None = None, stage: int = 0) -> Setup:
  """Fresh classifier (head initialised, backbone from `pretrained` if given), optimizer over
  the parameter groups of `stage` of the gradual-unfreezing `plan` (default: the config's
  train.param_groups throughout), and the matching model."""
  plan = plan or stages.plan(train_cfg)
  rng = jax.random.PRNGKey(int(train_cfg.seed))
  init_rng, run_rng = jax.random.split(rng)
  probe = EmbeddingClassifier(finetune_backbone(info, widths=widths), num_classes,
                              dropout=float(train_cfg.head_dropout))
  x = jnp.zeros((1, frames or info.spec.frames_per_window, info.spec.n_mels), jnp.float32)
  variables = init_variables(probe, init_rng, x)
  if pretrained is not None:
    variables = merge_pretrained(variables, pretrained, info)
  parts = _stage(info, num_classes, train_cfg, variables["params"], plan.rules[stage],
                 plan.group_starts(variables["params"]), widths, bn_axis_name)
  return Setup(state=TrainState.create(variables, parts["tx"], run_rng), **parts)


def restage(setup: Setup, info: ModelInfo, num_classes: int, train_cfg, plan: stages.Plan,
            stage: int, state: TrainState, widths=None, bn_axis_name: str | None = None
            ) -> tuple[Setup, TrainState]:
  """Move a run to `stage`: new optimizer and model, and `state` (host arrays) with the
  optimizer state of parameters whose group is unchanged carried over."""
  parts = _stage(info, num_classes, train_cfg, state.params, plan.rules[stage],
                 plan.group_starts(state.params), widths, bn_axis_name)
  fresh = jax.tree_util.tree_map(np.asarray, parts["tx"].init(state.params))
  state = state.replace(opt_state=stages.transplant(fresh, state.opt_state))
  return Setup(state=state, **parts), state
