"""On-device augmentation of normalised log-mel batches, inside the jitted train step.

All functions take a [B, T, M] batch (mixup also [B, D] embeddings) and a PRNG key and are pure; evaluation never calls
them. Masks fill with the frontend's silence value, and a random gain is applied through the
spec's own compression (exact for dB features, inverted and re-applied for aiSFX's
log10(1e4 x + 1)), so augmented features stay features the model could have seen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxaudio.audio.spec import FrontendSpec


def spec_augment(key, x, num_masks: int, width: int, axis: int, fill: float):
  """Zero `num_masks` random bands of up to `width` along `axis` (1 = time, 2 = mel)."""
  if num_masks <= 0 or width <= 0:
    return x
  size = x.shape[axis]
  b = x.shape[0]
  keys = jax.random.split(key, 2)
  widths = jax.random.randint(keys[0], (b, num_masks), 0, width + 1)
  starts = jax.random.randint(keys[1], (b, num_masks), 0, jnp.maximum(size - widths, 1))
  pos = jnp.arange(size)[None, None, :]
  masked = jnp.any((pos >= starts[..., None]) & (pos < (starts + widths)[..., None]), axis=1)
  shape = [b, 1, 1]
  shape[axis] = size
  return jnp.where(masked.reshape(shape), fill, x)


def time_shift(key, x, max_fraction: float):
  """Roll each example along time by up to max_fraction of the window (circular)."""
  if max_fraction <= 0:
    return x
  t = x.shape[1]
  limit = max(1, int(t * max_fraction))
  shifts = jax.random.randint(key, (x.shape[0], 1), -limit, limit + 1)
  # A gather rather than vmap(roll): it keeps the batch's sharding under jit over a mesh.
  idx = (jnp.arange(t)[None, :] - shifts) % t
  return jnp.take_along_axis(x, idx[:, :, None], axis=1)


def random_gain(key, x, spec: FrontendSpec, max_db: float):
  """Apply a waveform gain of U(-max_db, max_db) dB through the spec's compression.

  dB compression: a gain is an additive shift of g / (norm range). log10(scale*p + shift):
  undo the normalisation and compression, scale the power by 10^(g/10), compress again.
  """
  if max_db <= 0:
    return x
  g = jax.random.uniform(key, (x.shape[0], 1, 1), minval=-max_db, maxval=max_db)
  span = spec.norm_max - spec.norm_min
  if spec.compression == "power_to_db":
    return x + g / span
  logv = x * span + spec.norm_min
  power = (10.0 ** logv - spec.log_shift) / spec.log_scale
  power = jnp.maximum(power, 0.0) * 10.0 ** (g / 10.0)
  return (jnp.log10(spec.log_scale * power + spec.log_shift) - spec.norm_min) / span


def mixup(key, x, y_onehot, alpha: float):
  """Convex mix of each example with its neighbour in the batch (the batch rolled by one, as
  big_vision does; batches are shuffled, so the pairs are random); labels mixed the same
  way. A roll moves one row across each shard boundary, where a random permutation of a
  data-sharded batch is an all-gather of the whole batch on every step."""
  if alpha <= 0:
    return x, y_onehot
  lam = jax.random.beta(key, alpha, alpha, (x.shape[0],))
  lam = jnp.maximum(lam, 1.0 - lam)   # keep the original example dominant
  lx = lam.reshape((-1,) + (1,) * (x.ndim - 1))   # [B, T, M] windows or [B, D] embeddings
  ly = lam[:, None]
  return (lx * x + (1 - lx) * jnp.roll(x, 1, axis=0),
          ly * y_onehot + (1 - ly) * jnp.roll(y_onehot, 1, axis=0))


def augment(key, x, y_onehot, cfg, spec: FrontendSpec, silence: float):
  """The configured chain: gain -> time shift -> SpecAugment (time, mel) -> mixup."""
  k = jax.random.split(key, 5)
  x = random_gain(k[0], x, spec, float(cfg.gain_db))
  x = time_shift(k[1], x, float(cfg.time_shift))
  x = spec_augment(k[2], x, int(cfg.time_masks), int(cfg.time_mask_width), 1, silence)
  x = spec_augment(k[3], x, int(cfg.freq_masks), int(cfg.freq_mask_width), 2, silence)
  return mixup(k[4], x, y_onehot, float(cfg.mixup_alpha))
