"""Pure train and eval steps: (state, batch) -> (state, metrics), no side effects.

Frozen parameters are wrapped in stop_gradient inside the loss, so XLA never computes their
gradients; together with the backbone's stop_gradient after the frozen prefix and BatchNorm
on running averages there, frozen blocks cost a forward pass only and stay bitwise equal.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxaudio.train import augment as aug
from jaxaudio.train.optimizer import evaluation_params
from jaxaudio.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static pieces of a step (hashable closure data, not traced)."""

  model: Any                     # flax module: x -> {"logits", "embedding"}
  tx: optax.GradientTransformation
  trainable: Any                 # pytree of bools like params
  num_classes: int
  multi_label: bool
  augment: Any = None            # config's train.augment, or None for no augmentation
  spec: Any = None               # FrontendSpec (for gain and mask fill)
  silence: float = 0.0
  axis_name: str | None = None   # pmap axis: gradients and metrics are averaged over it
  label_smoothing: float = 0.0   # single-label targets only
  class_weights: tuple[float, ...] | None = None   # loss weight per class (single-label)


def _targets(batch, cfg: StepConfig):
  if cfg.multi_label:
    return batch["label"].astype(jnp.float32)
  return jax.nn.one_hot(batch["label"], cfg.num_classes, dtype=jnp.float32)


def per_example_loss(logits, targets, multi_label: bool):
  logits = logits.astype(jnp.float32)
  if multi_label:
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)
  return optax.softmax_cross_entropy(logits, targets)


def _mean(values, mask, axis_name):
  total, count = jnp.sum(values * mask), jnp.sum(mask)
  if axis_name:
    total, count = jax.lax.psum(total, axis_name), jax.lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1.0)


def train_step(state: TrainState, batch: dict[str, jax.Array], cfg: StepConfig
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  key = jax.random.fold_in(state.rng, state.step)
  if cfg.axis_name:
    key = jax.random.fold_in(key, jax.lax.axis_index(cfg.axis_name))
  k_aug, k_drop = jax.random.split(key)
  x, mask = batch["mel"], batch["mask"].astype(jnp.float32)
  targets = _targets(batch, cfg)
  if cfg.augment is not None and cfg.augment.enabled:
    x, targets = aug.augment(k_aug, x, targets, cfg.augment, cfg.spec, cfg.silence)
  weight = mask
  if cfg.class_weights is not None:   # mixed targets weigh their classes in proportion
    weight = mask * (targets @ jnp.asarray(cfg.class_weights, jnp.float32))
  if cfg.label_smoothing and not cfg.multi_label:
    targets = optax.smooth_labels(targets, cfg.label_smoothing)

  def loss_fn(params):
    params = jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                                    cfg.trainable)
    out, updates = cfg.model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                   train=True, mutable=["batch_stats"], rngs={"dropout": k_drop})
    per_example = per_example_loss(out["logits"], targets, cfg.multi_label)
    # Local masked mean; with pmap, averaging gradients over equal-size shards gives the
    # global-batch gradient.
    loss = jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, (out["logits"], updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if cfg.axis_name:
    grads = jax.lax.pmean(grads, cfg.axis_name)
    loss = jax.lax.pmean(loss, cfg.axis_name)
  updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
  # Frozen leaves are left out entirely: p + 0.0 would turn -0.0 into +0.0.
  params = jax.tree_util.tree_map(lambda p, u, t: (p + u).astype(p.dtype) if t else p,
                                  state.params, updates, cfg.trainable)
  trainable_grads = jax.tree_util.tree_map(lambda g, t: g if t else jnp.zeros((), g.dtype),
                                           grads, cfg.trainable)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(trainable_grads)}
  if not cfg.multi_label:
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    metrics["accuracy"] = _mean(correct, mask, cfg.axis_name)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], cfg: StepConfig
              ) -> dict[str, jax.Array]:
  """Per-example logits and loss (masked rows included; the caller drops them), with the
  weights the run evaluates (their moving average when train.ema_decay > 0)."""
  params = evaluation_params(state.params, state.opt_state)
  out = cfg.model.apply({"params": params, "batch_stats": state.batch_stats},
                        batch["mel"], train=False)
  per_example = per_example_loss(out["logits"], _targets(batch, cfg), cfg.multi_label)
  return {"logits": out["logits"].astype(jnp.float32), "loss": per_example,
          "embedding": out["embedding"]}
