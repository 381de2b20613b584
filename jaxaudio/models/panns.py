"""PANNs Cnn14 / Cnn10 / Cnn6 (Kong et al. 2020, audioset_tagging_cnn), in Flax.

bn0 normalises each mel bin; conv blocks with 2x2 average pooling (Cnn14's last block has
none); dropout 0.2 after each block; mean over mel bands, then clip pooling max + mean over
time; dropout 0.5; fc1 + ReLU is the embedding; fc_audioset gives the 527 AudioSet logits
(the originals apply a sigmoid on top). Input: log-mel in dB [batch, frames, 64].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaudio.models.layers import ConvBlock, batch_norm, frozen_prefix_length

AUDIOSET_CLASSES = 527


@dataclasses.dataclass(frozen=True)
class PannsArch:
  widths: tuple[int, ...]
  kernel: int
  num_convs: int
  last_block_pools: bool

  @property
  def layer_groups(self) -> tuple[str, ...]:
    blocks = tuple(f"block{i}" for i in range(1, len(self.widths) + 1))
    return ("bn0",) + blocks + ("fc1", "fc_audioset")


ARCHS = {
    "cnn14": PannsArch((64, 128, 256, 512, 1024, 2048), kernel=3, num_convs=2,
                       last_block_pools=False),
    "cnn10": PannsArch((64, 128, 256, 512), kernel=3, num_convs=2, last_block_pools=True),
    "cnn6": PannsArch((64, 128, 256, 512), kernel=5, num_convs=1, last_block_pools=True),
}


class Panns(nn.Module):
  """A PANNs CNN. `widths` may be shrunk for fast tests; `audioset_head=False` drops fc_audioset."""

  arch: str = "cnn14"
  widths: Sequence[int] | None = None
  audioset_head: bool = True
  frozen: Sequence[str] = ()
  running_bn: Sequence[str] = ()    # trainable groups that keep BN on running averages
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None   # set to the pmap axis to synchronise BatchNorm

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    spec = ARCHS[self.arch]
    widths = tuple(self.widths or spec.widths)
    order = spec.layer_groups
    stop_after = frozen_prefix_length(order, self.frozen)

    def maybe_stop(i, h):
      return jax.lax.stop_gradient(h) if i + 1 == stop_after else h

    running = set(self.frozen) | set(self.running_bn)
    x = batch_norm("bn0", not train or "bn0" in running,
                   axis_name=self.bn_axis_name)(x.astype(jnp.float32))
    x = maybe_stop(0, x).astype(self.dtype)[..., None]  # [B, T, M, 1]
    for i, width in enumerate(widths, start=1):
      last = i == len(widths)
      pool = (2, 2) if (not last or spec.last_block_pools) else (1, 1)
      name = f"block{i}"
      x = ConvBlock(width, kernel=spec.kernel, num_convs=spec.num_convs, pool=pool,
                    pool_type="avg", dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                    name=name)(
                        x, use_running_average=not train or name in running)
      x = nn.Dropout(0.2, deterministic=not train)(x)
      x = maybe_stop(i, x)
    x = jnp.mean(x.astype(jnp.float32), axis=2)        # over mel bands -> [B, T', C]
    x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)      # clip pooling
    x = nn.Dropout(0.5, deterministic=not train)(x)
    emb = nn.relu(nn.Dense(widths[-1], dtype=self.dtype, name="fc1")(x)).astype(jnp.float32)
    emb = maybe_stop(len(widths) + 1, emb)
    out = {"embedding": emb}
    if self.audioset_head:
      out["audioset_logits"] = nn.Dense(AUDIOSET_CLASSES, dtype=self.dtype,
                                        name="fc_audioset")(emb).astype(jnp.float32)
    return out
