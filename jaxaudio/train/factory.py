"""Assemble what a run trains: classifier, optimizer, initial state, frozen layer groups."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxaudio.models.head import EmbeddingClassifier
from jaxaudio.models.init import init_variables
from jaxaudio.models.registry import ModelInfo, finetune_backbone
from jaxaudio.train import optimizer
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


def build(info: ModelInfo, num_classes: int, train_cfg, pretrained: dict[str, Any] | None = None,
          widths=None, bn_axis_name: str | None = None, frames: int | None = None) -> Setup:
  """Fresh classifier (head initialised, backbone from `pretrained` if given), optimizer over
  the config's parameter groups, and a model whose fully frozen blocks use running stats."""
  dtype = jnp.bfloat16 if train_cfg.mixed_precision else jnp.float32
  rng = jax.random.PRNGKey(int(train_cfg.seed))
  init_rng, run_rng = jax.random.split(rng)
  probe = EmbeddingClassifier(finetune_backbone(info, widths=widths), num_classes,
                              dropout=float(train_cfg.head_dropout))
  x = jnp.zeros((1, frames or info.spec.frames_per_window, info.spec.n_mels), jnp.float32)
  variables = init_variables(probe, init_rng, x)
  if pretrained is not None:
    variables = merge_pretrained(variables, pretrained, info)
  tx, assignment, schedules = optimizer.make_optimizer(variables["params"], train_cfg)
  frozen = optimizer.frozen_layer_groups(variables["params"], assignment, info.layer_groups)
  model = EmbeddingClassifier(
      finetune_backbone(info, widths=widths, frozen=frozen, dtype=dtype,
                        bn_axis_name=bn_axis_name),
      num_classes, dropout=float(train_cfg.head_dropout))
  state = TrainState.create(variables, tx, run_rng)
  return Setup(model=model, tx=tx, state=state,
               trainable=optimizer.trainable_mask(variables["params"], assignment),
               assignment=assignment, schedules=schedules, frozen_groups=frozen)
