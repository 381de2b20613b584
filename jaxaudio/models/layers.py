"""Building blocks shared by the CNNs: conv block, and the frozen-prefix rule."""

from __future__ import annotations

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
  scale stay float32 even under bfloat16 compute."""
  return nn.BatchNorm(use_running_average=use_running_average, momentum=momentum,
                      epsilon=epsilon, axis=axis, dtype=jnp.float32, axis_name=axis_name,
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
      pool_fn = nn.max_pool if self.pool_type == "max" else nn.avg_pool
      x = pool_fn(x, self.pool, strides=self.pool, padding="VALID")
    return x


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
