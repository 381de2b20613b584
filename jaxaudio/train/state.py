"""The whole training state as one pytree, so a checkpoint of it is a complete run."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """step, params, BatchNorm statistics, optimizer state and the run's RNG key."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array

  @classmethod
  def create(cls, variables: dict[str, Any], tx: optax.GradientTransformation,
             rng: jax.Array) -> "TrainState":
    params = variables["params"]
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
               batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params), rng=rng)
