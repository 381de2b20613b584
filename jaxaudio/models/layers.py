"""Building blocks shared by the CNNs: conv block, and the frozen-prefix rule."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch BatchNorm2d(momentum=0.1, eps=1e-5) expressed in Flax terms.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# TensorFlow 1 tf.layers.batch_normalization defaults (momentum means the same as in Flax).
TF_BN_MOMENTUM = 0.99
TF_BN_EPSILON = 1e-3


def batch_norm(name: str, use_running_average: bool, axis: int = -1,
               axis_name: str | None = None, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPSILON) -> nn.BatchNorm:
  """BatchNorm, PyTorch-equivalent by default. `axis_name` averages batch statistics across
  pmap devices, so N devices train like one device with the global batch. Statistics and
  scale stay float32 even under bfloat16 compute. The variance is mean((x - mean)^2), not
  Flax's default mean(x^2) - mean^2, which cancels where the mean is large against the
  spread: the one-pass form doubles the median error of aiSFX's float32 training gradients
  against float64 (4.2e-4 against 2.0e-4, bench/grad_accuracy.py), at no measurable cost in
  step time."""
  return nn.BatchNorm(use_running_average=use_running_average, momentum=momentum,
                      epsilon=epsilon, axis=axis, dtype=jnp.float32, axis_name=axis_name,
                      use_fast_variance=False,
                      name=name)


def tf_batch_norm(name: str, use_running_average: bool,
                  axis_name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with the TF1 defaults (momentum 0.99, epsilon 1e-3) of converted TF models."""
  return batch_norm(name, use_running_average, axis_name=axis_name, momentum=TF_BN_MOMENTUM,
                    epsilon=TF_BN_EPSILON)


class ConvBlock(nn.Module):
  """num_convs x (k x k conv without bias -> BatchNorm -> ReLU), then 2-D pooling.

  Input and output are NHWC with H = time, W = mel bands, as the PyTorch originals see
  them after NCHW -> NHWC.
  """

  features: int
  kernel: int = 3
  num_convs: int = 2
  pool: tuple[int, int] = (2, 2)
  pool_type: str = "max"
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    pad = self.kernel // 2
    for i in range(1, self.num_convs + 1):
      x = nn.Conv(self.features, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
                  use_bias=False, dtype=self.dtype, name=f"conv{i}")(x)
      x = batch_norm(f"bn{i}", use_running_average, axis_name=self.bn_axis_name)(x)
      x = x.astype(self.dtype)
      x = nn.relu(x)
    if tuple(self.pool) != (1, 1):
      x = pool2d(x, tuple(self.pool), self.pool_type)
    return x


def pool2d(x: jax.Array, window: tuple[int, int], kind: str = "max") -> jax.Array:
  """Non-overlapping max or average pooling of NHWC maps (stride = window, VALID: trailing
  rows and columns that do not fill a window are dropped, as in PyTorch's max_pool2d and
  avg_pool2d), written as a reshape and a reduction instead of XLA's reduce_window.

  The same numbers as nn.max_pool / nn.avg_pool. Max pooling has its own gradient, an
  elementwise select instead of XLA's select-and-scatter, which is slow on CPU (aiSFX's
  first pool, batch 32: forward and backward 43 ms against 302 ms). The reshaped mean lets
  YNNPACK take PANNs' average pools: Cnn10's forward 6.7 against 5.7 examples/s with
  nn.avg_pool (with XLA's own kernels, JAXAUDIO_XLA_CPU_DEFAULT=1, it is the other way round).
  """
  b, h, w, c = x.shape
  ph, pw = window
  x = x[:, :h // ph * ph, :w // pw * pw]
  if kind != "max":
    return jnp.mean(x.reshape(b, h // ph, ph, w // pw, pw, c), axis=(2, 4))
  return _max_pool(x, window)


def _window_elements(x: jax.Array, window: tuple[int, int]) -> list[jax.Array]:
  """The ph x pw elements of every window, each [B, H/ph, W/pw, C], in row-major order."""
  b, h, w, c = x.shape
  ph, pw = window
  xr = x.reshape(b, h // ph, ph, w // pw, pw, c)
  return [xr[:, :, i, :, j] for i in range(ph) for j in range(pw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  return _max_pool_fwd(x, window)[0]


def _max_pool_fwd(x, window):
  """Max of each window, and which element holds it (the first one on a tie, as PyTorch).
  The gradient goes to that element alone: a rule written as `x == max` would lose it where
  XLA recomputes x in the backward pass with different rounding and nothing compares equal."""
  elements = _window_elements(x, window)
  best, where = elements[0], jnp.zeros(elements[0].shape, jnp.int8)
  for k, e in enumerate(elements[1:], start=1):
    where = jnp.where(e > best, jnp.int8(k), where)
    best = jnp.maximum(best, e)
  return best, (where, x.shape)


def _max_pool_bwd(window, residuals, g):
  where, shape = residuals
  b, h, w, c = shape
  ph, pw = window
  parts = [jnp.where(where == k, g, jnp.zeros_like(g)) for k in range(ph * pw)]
  rows = [jnp.stack(parts[i * pw:(i + 1) * pw], axis=3) for i in range(ph)]  # [B,H',W',pw,C]
  return (jnp.stack(rows, axis=2).reshape(b, h, w, c),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def frozen_prefix_length(order: Sequence[str], frozen: Sequence[str]) -> int:
  """How many leading layer groups (in forward order) are frozen.

  Gradients are stopped after that prefix, so XLA never computes them; frozen groups after
  a trainable one still pass gradients through but receive zero updates from the optimizer.
  """
  n = 0
  for name in order:
    if name not in frozen:
      break
    n += 1
  return n
