"""musicnn and its vgg baseline (Pons & Serra 2019, the `musicnn` package), in Flax.

Both take the musicnn log-mel [batch, 187 frames, 96 bands] (registry.MUSICNN_SPEC) and end in
50 music tags (MagnaTagATune or Million Song Dataset). The structure follows the stored TF 1.12
graphs of the package's checkpoints, which are the truth where the package's models.py
differs (MSD_vgg pools differently). Every BatchNorm has TF's epsilon 1e-3 and momentum 0.99.

musicnn: input BatchNorm; front end of timbral convs [7,38] and [7,67] (time zero-padded 3+3)
and temporal convs [128,1], [64,1], [32,1] (TF SAME), each conv -> ReLU -> BatchNorm -> max
over frequency, concatenated to [B, T, 561]; mid end of three k=7 1-D convs (conv -> ReLU ->
BatchNorm, residuals on the 2nd and 3rd), dense-connected to [B, T, 753]; back end: max and
mean over time, interleaved (max0, mean0, max1, ...) -> BatchNorm -> dense 200 + ReLU ->
BatchNorm = the 200-d embedding ("penultimate") -> dense 50 tag logits.

vgg: input BatchNorm, five blocks of 3x3 SAME conv 128 (+bias) -> ReLU -> BatchNorm ->
max-pool; the embedding is pool5 flattened in TF's (h, w, c) order (256-d) -> dense 50.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaudio.models.layers import frozen_prefix_length, tf_batch_norm

MUSICNN_GROUPS = ("frontend", "midend", "backend", "tags")
VGG_GROUPS = ("block1", "block2", "block3", "block4", "block5", "tags")
NUM_TAGS = 50
MUSICNN_WIDTHS = (204, 51, 64, 200)  # timbral filters, temporal filters, mid end, back end
VGG_WIDTHS = (128,) * 5

# (time, freq) max-pool windows, each equal to its stride, as the stored graphs have them.
VGG_POOLS = {
    "mtt": (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)),
            ((4, 4), (4, 4))),
    "msd": (((4, 1), (4, 1)), ((1, 4), (1, 4)), ((2, 2), (2, 2)), ((2, 2), (2, 2)),
            ((4, 4), (4, 4))),
}

# Flax module path -> TF variable scope in the original checkpoints (creation order there).
MUSICNN_TF_SCOPES = {
    ("frontend", "bn_input"): "batch_normalization",
    ("frontend", "timbral74", "conv"): "conv2d",
    ("frontend", "timbral74", "bn"): "batch_normalization_1",
    ("frontend", "timbral77", "conv"): "conv2d_1",
    ("frontend", "timbral77", "bn"): "batch_normalization_2",
    ("frontend", "temporal128", "conv"): "conv2d_2",
    ("frontend", "temporal128", "bn"): "batch_normalization_3",
    ("frontend", "temporal64", "conv"): "conv2d_3",
    ("frontend", "temporal64", "bn"): "batch_normalization_4",
    ("frontend", "temporal32", "conv"): "conv2d_4",
    ("frontend", "temporal32", "bn"): "batch_normalization_5",
    ("midend", "conv1"): "conv2d_5",
    ("midend", "bn1"): "batch_normalization_6",
    ("midend", "conv2"): "conv2d_6",
    ("midend", "bn2"): "batch_normalization_7",
    ("midend", "conv3"): "conv2d_7",
    ("midend", "bn3"): "batch_normalization_8",
    ("backend", "bn_pool"): "batch_normalization_9",
    ("backend", "dense"): "dense",
    ("backend", "bn_dense"): "batch_normalization_10",
    ("tags",): "dense_1",
}
VGG_TF_SCOPES = {
    ("block1", "bn_input"): "batch_normalization",
    **{(f"block{i}", "conv"): f"{i}CNN" for i in range(1, 6)},
    **{(f"block{i}", "bn"): f"batch_normalization_{i}" for i in range(1, 6)},
    ("tags",): "dense",
}

# The 50 tags of each training set, in the order of the checkpoints' output units
# (musicnn/configuration.py).
MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral")
MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy")


class _FreqMaxConv(nn.Module):
  """conv -> ReLU -> BatchNorm -> max over the frequency axis: [B, T, F, 1] -> [B, T, C]."""

  features: int
  kernel: tuple[int, int]
  time_padding: tuple[int, int]
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    x = nn.Conv(self.features, self.kernel, padding=(self.time_padding, (0, 0)),
                dtype=self.dtype, name="conv")(x)
    x = tf_batch_norm("bn", use_running_average, self.bn_axis_name)(nn.relu(x))
    return jnp.max(x, axis=2).astype(self.dtype)


def _with_tags(emb: jax.Array, tags: bool, dtype: Any, train: bool) -> dict[str, jax.Array]:
  """{"embedding"} and, with the pretrained tag layer, dropout 0.5 -> Dense 50 "tag_logits"
  (created in the calling module's scope, as `tags`)."""
  out = {"embedding": emb}
  if tags:
    h = nn.Dropout(0.5, deterministic=not train)(emb)
    out["tag_logits"] = nn.Dense(NUM_TAGS, dtype=dtype, name="tags")(h).astype(jnp.float32)
  return out


def _same_padding(k: int) -> tuple[int, int]:
  """TF SAME padding of a stride-1 kernel: an even kernel puts the extra row after."""
  return ((k - 1) // 2, k // 2)


class Musicnn(nn.Module):
  """musicnn. `frozen` groups run BN on running averages and pass no gradient back;
  `running_bn` names trainable groups that keep BN on running averages; `tags=False` drops
  the 50-tag layer (fine-tuning puts a head of its own on the embedding)."""

  widths: Sequence[int] = MUSICNN_WIDTHS
  tags: bool = True
  frozen: Sequence[str] = ()
  running_bn: Sequence[str] = ()
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    timbral, temporal, mid, back = self.widths
    stop_after = frozen_prefix_length(MUSICNN_GROUPS, self.frozen)
    running = set(self.frozen) | set(self.running_bn)

    def norm(group):
      return not train or group in running

    def maybe_stop(i, h):
      return jax.lax.stop_gradient(h) if i + 1 == stop_after else h

    x = _Frontend(timbral, temporal, self.dtype, self.bn_axis_name, name="frontend")(
        x, norm("frontend"))
    x = maybe_stop(0, x)
    x = _Midend(mid, self.dtype, self.bn_axis_name, name="midend")(x, norm("midend"))
    x = maybe_stop(1, x)
    emb = _Backend(back, self.dtype, self.bn_axis_name, name="backend")(
        x, norm("backend"), train)
    return _with_tags(maybe_stop(2, emb), self.tags, self.dtype, train)


class _Frontend(nn.Module):
  timbral: int
  temporal: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    n_mels = x.shape[-1]
    x = tf_batch_norm("bn_input", use_running_average, self.bn_axis_name)(
        x.astype(jnp.float32)[..., None]).astype(self.dtype)
    branches = [
        _FreqMaxConv(self.timbral, (7, int(frac * n_mels)), (3, 3), self.dtype,
                     self.bn_axis_name, name=f"timbral7{tag}")(x, use_running_average)
        for frac, tag in ((0.4, 4), (0.7, 7))]
    branches += [
        _FreqMaxConv(self.temporal, (k, 1), _same_padding(k), self.dtype, self.bn_axis_name,
                     name=f"temporal{k}")(x, use_running_average)
        for k in (128, 64, 32)]
    return jnp.concatenate(branches, axis=-1)                # [B, T, 561]


class _Midend(nn.Module):
  features: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    outs = [x]
    h = x
    for i in (1, 2, 3):
      y = nn.Conv(self.features, (7,), padding=((3, 3),), dtype=self.dtype, name=f"conv{i}")(h)
      y = tf_batch_norm(f"bn{i}", use_running_average, self.bn_axis_name)(nn.relu(y))
      h = y.astype(self.dtype) if i == 1 else (y + h).astype(self.dtype)
      outs.append(h)
    return jnp.concatenate(outs, axis=-1)                    # [B, T, 753]


class _Backend(nn.Module):
  features: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool, train: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    pooled = jnp.stack([jnp.max(x, axis=1), jnp.mean(x, axis=1)], axis=-1)
    h = pooled.reshape(x.shape[0], -1)                       # max0, mean0, max1, mean1, ...
    h = tf_batch_norm("bn_pool", use_running_average, self.bn_axis_name)(h)
    h = nn.Dropout(0.5, deterministic=not train)(h)
    h = nn.relu(nn.Dense(self.features, dtype=self.dtype, name="dense")(h))
    return tf_batch_norm("bn_dense", use_running_average, self.bn_axis_name)(h).astype(
        jnp.float32)


class Vgg(nn.Module):
  """musicnn's vgg baseline; `pools` is VGG_POOLS['mtt'] or ['msd'] (they differ)."""

  pools: Sequence[Any] = VGG_POOLS["mtt"]
  widths: Sequence[int] = VGG_WIDTHS
  tags: bool = True
  frozen: Sequence[str] = ()
  running_bn: Sequence[str] = ()
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    stop_after = frozen_prefix_length(VGG_GROUPS, self.frozen)
    running = set(self.frozen) | set(self.running_bn)
    x = x[..., None]
    for i, (width, (window, stride)) in enumerate(zip(self.widths, self.pools)):
      name = f"block{i + 1}"
      x = _VggBlock(width, tuple(window), tuple(stride), first=i == 0,
                    last=i == len(self.widths) - 1, dtype=self.dtype,
                    bn_axis_name=self.bn_axis_name, name=name)(
                        x, not train or name in running, train)
      if i + 1 == stop_after:
        x = jax.lax.stop_gradient(x)
    emb = x.reshape(x.shape[0], -1).astype(jnp.float32)     # TF flatten: (h, w, c) order
    return _with_tags(emb, self.tags, self.dtype, train)


class _VggBlock(nn.Module):
  """[input BatchNorm] -> 3x3 SAME conv -> ReLU -> BatchNorm -> max-pool [-> dropout 0.25]."""

  features: int
  window: tuple[int, int]
  stride: tuple[int, int]
  first: bool
  last: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool, train: bool) -> jax.Array:
    if self.first:
      x = tf_batch_norm("bn_input", use_running_average, self.bn_axis_name)(
          x.astype(jnp.float32))
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                name="conv")(x.astype(self.dtype))
    x = tf_batch_norm("bn", use_running_average, self.bn_axis_name)(nn.relu(x))
    # window_shape by keyword: jax2onnx 0.13-0.17's nn.max_pool replacement takes it no other
    # way ("patched_max_pool() takes 1 positional argument but 2 ... were given").
    x = nn.max_pool(x.astype(self.dtype), window_shape=self.window, strides=self.stride,
                    padding="VALID")
    if not self.last:
      x = nn.Dropout(0.25, deterministic=not train)(x)
    return x
