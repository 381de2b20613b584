"""A converged linear probe on fixed embeddings: the baseline a fine-tune must beat, and how
model selection scores a pretrained model before any fine-tuning."""

from __future__ import annotations
import math
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxaudio.models.head import HeadOnlyClassifier
from jaxaudio.train import optimizer
from jaxaudio.train import steps as steps_lib


PROBE_LR = 3e-3


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, multi_label: bool,
              train_cfg, steps: int, seed: int, lr: float = PROBE_LR):
  """Train the head on embeddings x [N, D] for `steps` minibatches; returns logits_fn."""
  model = HeadOnlyClassifier(num_classes, dropout=float(train_cfg.head_dropout))
  tx = optax.adamw(lr, b1=float(train_cfg.adam_b1), b2=float(train_cfg.adam_b2),
                   eps=float(train_cfg.adam_eps), weight_decay=float(train_cfg.weight_decay),
                   mask=optimizer.decay_mask)
  key = jax.random.PRNGKey(seed)
  params = model.init(key, jnp.zeros((1, x.shape[1]), jnp.float32))["params"]
  batch = min(int(train_cfg.batch_size), len(x))
  rng = np.random.default_rng(seed)
  epochs = math.ceil(steps * batch / len(x))
  order = np.concatenate([rng.permutation(len(x)) for _ in range(epochs)])
  index = order[:steps * batch].reshape(steps, batch)
  smoothing = float(train_cfg.label_smoothing)

  def loss_fn(p, xb, yb, k):
    logits = model.apply({"params": p}, xb, train=True, rngs={"dropout": k})["logits"]
    if multi_label:
      targets = yb.astype(jnp.float32)
    else:
      targets = jax.nn.one_hot(yb, num_classes)
      if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    return steps_lib.per_example_loss(logits, targets, multi_label).mean()

  def train(p, opt, xs, ys, index):
    def step(carry, inputs):
      p, opt = carry
      idx, i = inputs
      grads = jax.grad(loss_fn)(p, xs[idx], ys[idx], jax.random.fold_in(key, i))
      updates, opt = tx.update(grads, opt, p)
      return (optax.apply_updates(p, updates), opt), None
    return jax.lax.scan(step, (p, opt), (index, jnp.arange(len(index))))[0]

  # The embeddings are arguments, not constants folded into the compiled program.
  params, _ = jax.jit(train)(params, tx.init(params), jnp.asarray(x, jnp.float32),
                             jnp.asarray(y), jnp.asarray(index))
  apply = jax.jit(lambda p, xb: model.apply({"params": p}, xb)["logits"])
  return lambda xb: np.asarray(apply(params, jnp.asarray(xb, jnp.float32)))
