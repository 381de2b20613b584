"""aiSFX embedding CNN (Ma & Lerch, ISMIR 2022, model "X-Sequential-CE"), in Flax.

Four blocks of (3x3 conv, no bias -> BN -> ReLU) x 2, widths 64/128/256/512, 2x2 max-pool
after blocks 1-3; embedding = mean over mel bands, then max over time -> 512-d. Input is the
normalised Essentia-path log-mel [batch, 100 frames, 96 bands] (see registry.AISFX_SPEC).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaudio.models.layers import ConvBlock, frozen_prefix_length

LAYER_GROUPS = ("block1", "block2", "block3", "block4")


class AiSFX(nn.Module):
  """aiSFX embedding network; `frozen` names blocks that run BN on running averages and
  pass no gradient back; `running_bn` names trainable blocks that still normalise with
  (and keep) their running averages (train.bn=running)."""

  widths: Sequence[int] = (64, 128, 256, 512)
  frozen: Sequence[str] = ()
  running_bn: Sequence[str] = ()
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None   # set to the pmap axis to synchronise BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    x = x.astype(self.dtype)[..., None]  # [B, T, M, 1]
    pools = ((2, 2), (2, 2), (2, 2), (1, 1))
    stop_after = frozen_prefix_length(LAYER_GROUPS, self.frozen)
    for i, (name, width, pool) in enumerate(zip(LAYER_GROUPS, self.widths, pools)):
      block = ConvBlock(width, kernel=3, num_convs=2, pool=pool, pool_type="max",
                        dtype=self.dtype, bn_axis_name=self.bn_axis_name, name=name)
      x = block(x, use_running_average=not train or name in self.frozen
                or name in self.running_bn)
      if i + 1 == stop_after:
        x = jax.lax.stop_gradient(x)
    x = jnp.mean(x.astype(jnp.float32), axis=2)  # mean over mel bands -> [B, T', C]
    return {"embedding": jnp.max(x, axis=1)}     # max over time -> [B, C]
