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
    return {"embedding": emb, "logits": _classify(emb, self.num_classes, self.dropout, train)}


class HeadOnlyClassifier(nn.Module):
  """EmbeddingClassifier's head alone, on precomputed embeddings [B, D].

  Its only parameters are `head/...`, the same path and shapes as in EmbeddingClassifier,
  so it trains the head of a full classifier state (the frozen-backbone fast path);
  `backbone/...` variables passed to apply are ignored.
  """

  num_classes: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, emb: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    return {"embedding": emb, "logits": _classify(emb, self.num_classes, self.dropout, train)}


def _classify(emb: jax.Array, num_classes: int, dropout: float, train: bool) -> jax.Array:
  """dropout -> Dense named `head`, created in the calling module's scope."""
  h = nn.Dropout(dropout, deterministic=not train)(emb) if dropout else emb
  return nn.Dense(num_classes, name="head")(h).astype(jnp.float32)
