"""A fresh classification head on top of any embedding backbone, for fine-tuning."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class EmbeddingClassifier(nn.Module):
  """backbone -> embedding -> dropout -> Dense(num_classes) named `head`.

  Parameters live under `backbone/...` and `head/...`, the names configs match to freeze
  or unfreeze layer groups.
  """

  backbone: nn.Module
  num_classes: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    emb = self.backbone(x, train=train)["embedding"]
    h = nn.Dropout(self.dropout, deterministic=not train)(emb) if self.dropout else emb
    logits = nn.Dense(self.num_classes, name="head")(h)
    return {"embedding": emb, "logits": logits.astype(jnp.float32)}
