"""Map an original checkpoint (PyTorch state dict or TF1 variables) onto a Flax backbone.

PyTorch: `blockK` <-> `conv_blockK`; kernel/scale -> weight; mean/var -> running_mean/
running_var. Conv kernels OIHW -> HWIO, Linear weights transposed.
TF1: the model's `tf_scopes` name each Flax module's variable scope; BatchNorm scale/bias/
mean/var -> gamma/beta/moving_mean/moving_variance. HWIO kernels copy straight; a kernel whose
shape differs only by unit axes (a [7, 561, 1, 64] "2-D" conv that is a 1-D conv here) is
reshaped. Optimizer slots are ignored.
Every expected tensor must be present with the right shape, and every original tensor must be
used or explicitly ignored; otherwise CheckpointError lists names.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from jaxaudio.audio import melfilters
from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.models.registry import MODELS, ModelInfo

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
_TF_BN_LEAVES = {"scale": "gamma", "bias": "beta", "mean": "moving_mean",
                 "var": "moving_variance"}
TF_IGNORE = (r"/Adam(_\d+)?$", r"^beta[12]_power$", r"^global_step$")


def extract_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  """Find the state dict inside what a .pth holds (aiSFX: a (state, datasets) tuple;
  PANNs: {'model': state, ...}; or a bare state dict)."""

  def is_state(d):
    return isinstance(d, dict) and d and all(isinstance(v, np.ndarray) for v in d.values())

  if is_state(obj):
    return dict(obj)
  if isinstance(obj, (tuple, list)):
    for item in obj:
      if is_state(item):
        return dict(item)
  if isinstance(obj, dict):
    for key in ("model", "state_dict", "model_state_dict"):
      if is_state(obj.get(key)):
        return dict(obj[key])
  raise CheckpointError(f"{path}: holds no state dict of tensors (found {type(obj).__name__}); "
                        "pass the original model checkpoint file.")


def torch_name(info: ModelInfo, path: tuple[str, ...]) -> str:
  """Flax variable path (without collection) -> the original's state-dict key."""
  parts = [re.sub(r"^block(\d+)$", r"conv_block\1", p) for p in path[:-1]]
  return info.torch_prefix + ".".join(parts + [_LEAF_NAMES[path[-1]]])


def tf_name(info: ModelInfo, path: tuple[str, ...]) -> str:
  """Flax variable path (without collection) -> the TF1 checkpoint's variable name."""
  scope = info.tf_scopes.get(path[:-1], "/".join(path[:-1]) + "(no TF scope)")
  leaf = _TF_BN_LEAVES[path[-1]] if scope.startswith("batch_normalization") else path[-1]
  return f"{scope}/{leaf}"


def original_name(info: ModelInfo, path: tuple[str, ...]) -> str:
  return tf_name(info, path) if info.original_format == "tf1" else torch_name(info, path)


def _squeezed(shape) -> tuple[int, ...]:
  return tuple(d for d in shape if d != 1)


def _to_flax(arr: np.ndarray, leaf: str, info: ModelInfo, shape: tuple[int, ...]) -> np.ndarray:
  if info.original_format == "tf1":
    if arr.shape != shape and _squeezed(arr.shape) == _squeezed(shape):
      arr = arr.reshape(shape)
    return np.ascontiguousarray(arr)
  if leaf == "kernel" and arr.ndim == 4:
    return np.ascontiguousarray(arr.transpose(2, 3, 1, 0))  # OIHW -> HWIO
  if leaf == "kernel" and arr.ndim == 2:
    return np.ascontiguousarray(arr.T)                      # Linear [out, in] -> [in, out]
  return np.ascontiguousarray(arr)


def expected_shapes(info: ModelInfo) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(collection, *path): shape} of the full pretrained backbone (abstract, no compute)."""
  module = info.build()
  x = jax.ShapeDtypeStruct((1, info.spec.frames_per_window, info.spec.n_mels), np.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), x)
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in kp): tuple(v.shape) for kp, v in flat}


def torch_shapes(info: ModelInfo) -> dict[str, tuple[int, ...]]:
  """{original state-dict key: torch-layout shape} of every tensor the model converts."""
  return {torch_name(info, key[1:]): _torch_shape(shape, key[-1])
          for key, shape in expected_shapes(info).items()}


def _original_shape(info: ModelInfo, flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  return flax_shape if info.original_format == "tf1" else _torch_shape(flax_shape, leaf)


def _fits(info: ModelInfo, state: dict[str, np.ndarray]) -> bool:
  """Whether `state` holds every tensor `info` converts, each of a shape it accepts."""
  for key, shape in expected_shapes(info).items():
    name = original_name(info, key[1:])
    if name not in state:
      return False
    found, want = tuple(np.shape(state[name])), _original_shape(info, shape, key[-1])
    if found != want and not (info.original_format == "tf1"
                              and _squeezed(found) == _squeezed(want)):
      return False
  return True


def _short(names: list[str], n: int = 6) -> str:
  more = f" and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(names[:n]) + more


def _matching_models(info: ModelInfo, state: dict[str, np.ndarray]) -> list[str]:
  """Other models of the same original format whose every tensor this state holds."""
  return [name for name, other in MODELS.items()
          if other.original_format == info.original_format and name != info.name
          and _fits(other, state)]


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  if leaf == "kernel" and len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if leaf == "kernel" and len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return flax_shape


def _check_frontend(info: ModelInfo, state: dict[str, np.ndarray], path: str) -> None:
  """PANNs checkpoints carry their mel filterbank: refuse one built for another frontend."""
  mel_w = state.get("logmel_extractor.melW")
  if mel_w is None:
    return
  s = info.spec
  ours = melfilters.filterbank(s.mel_filters, s.sample_rate, s.n_fft, s.n_mels, s.fmin, s.fmax)
  if mel_w.shape != ours.T.shape or not np.allclose(mel_w, ours.T, atol=1e-5):
    raise CheckpointError(
        f"{path}: its mel filterbank (shape {mel_w.shape}) differs from {info.name}'s frontend "
        f"({s.sample_rate} Hz, n_fft {s.n_fft}, {s.n_mels} mels {s.fmin}-{s.fmax} Hz); use the "
        "32 kHz AudioSet checkpoint of this architecture.")


def convert_state_dict(info: ModelInfo, state: dict[str, np.ndarray],
                       path: str = "checkpoint") -> dict[str, Any]:
  """Original tensors by name -> {'params': ..., 'batch_stats': ...} for info.build()."""
  shapes = expected_shapes(info)
  ignore = TF_IGNORE if info.original_format == "tf1" else info.torch_ignore
  out: dict[str, Any] = {}
  used, missing, wrong = set(), [], []
  for key, shape in shapes.items():
    collection, path_ = key[0], key[1:]
    name = original_name(info, path_)
    if name not in state:
      missing.append(name)
      continue
    used.add(name)
    arr = _to_flax(np.asarray(state[name]), path_[-1], info, shape)
    if arr.shape != shape:
      wrong.append(f"{name} {tuple(np.shape(state[name]))} (expected "
                   f"{_original_shape(info, shape, path_[-1])})")
      continue
    node = out.setdefault(collection, {})
    for p in path_[:-1]:
      node = node.setdefault(p, {})
    node[path_[-1]] = arr.astype(np.float32)
  unexpected = sorted(k for k in state if k not in used and
                      not any(re.search(p, k) for p in ignore))
  if missing or wrong or unexpected:
    problems = []
    if missing:
      problems.append(f"{len(missing)} tensors missing ({_short(missing)})")
    if wrong:
      problems.append(f"{len(wrong)} of the wrong shape ({_short(wrong, 3)})")
    if unexpected:
      problems.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
    others = _matching_models(info, state)
    hint = (f"it matches --model={others[0]}" if others else
            f"pass a checkpoint of the {info.name} architecture")
    raise CheckpointError(f"{path} is not a {info.name} checkpoint: {'; '.join(problems)}; "
                          f"{hint}.")
  _check_frontend(info, state, path)
  return out
