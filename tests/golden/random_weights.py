"""Seeded random PANNs weights, in torch layout, regenerated identically by numpy anywhere.

Each tensor's stream is seeded by (seed, crc32(name)), so the result does not depend on the
order in which names are visited. Scales keep activations O(1) through the deep nets, so a
1e-4 absolute tolerance means the same thing at every layer.
"""

import zlib

import numpy as np


def random_tensor(name: str, shape, seed: int) -> np.ndarray:
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  shape = tuple(shape)
  if name.startswith("bn0."):
    if name.endswith("running_mean"):
      return rng.uniform(-60.0, -20.0, shape).astype(np.float32)
    if name.endswith("running_var"):
      return rng.uniform(100.0, 400.0, shape).astype(np.float32)
  if name.endswith("running_mean"):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
  if name.endswith("running_var"):
    return rng.uniform(0.5, 2.0, shape).astype(np.float32)
  if name.endswith("bias"):
    return (0.05 * rng.standard_normal(shape)).astype(np.float32)
  if name.endswith("weight") and len(shape) == 1:  # BatchNorm scale
    return rng.uniform(0.8, 1.2, shape).astype(np.float32)
  fan_in = int(np.prod(shape[1:]))
  gain = 2.0 if len(shape) == 4 else 1.0
  return (np.sqrt(gain / fan_in) * rng.standard_normal(shape)).astype(np.float32)


def random_state_dict(shapes: dict, seed: int) -> dict:
  """{torch name: shape} -> {torch name: float32 array}."""
  return {name: random_tensor(name, shape, seed) for name, shape in shapes.items()}
