"""Map a PyTorch state dict onto a Flax backbone's `params` and `batch_stats`.

Flax path -> torch name: `blockK` <-> `conv_blockK`; kernel/scale -> weight; mean/var ->
running_mean/running_var. Conv kernels OIHW -> HWIO, Linear weights transposed. Every
expected tensor must be present with the right shape, and every original tensor must be used
or explicitly ignored by the model's registry entry; otherwise CheckpointError lists names.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from jaxaudio.audio import melfilters
from jaxaudio.errors import CheckpointError
from jaxaudio.models.registry import MODELS, ModelInfo

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


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


def _to_flax(arr: np.ndarray, leaf: str) -> np.ndarray:
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


def _short(names: list[str], n: int = 6) -> str:
  more = f" and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(names[:n]) + more


def _matching_models(state: dict[str, np.ndarray]) -> list[str]:
  found = []
  for name, info in MODELS.items():
    if all(k in state and np.shape(state[k]) == s for k, s in torch_shapes(info).items()):
      found.append(name)
  return found


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
  """Torch-layout state dict -> {'params': ..., 'batch_stats': ...} for info.build()."""
  shapes = expected_shapes(info)
  out: dict[str, Any] = {}
  used, missing, wrong = set(), [], []
  for key, shape in shapes.items():
    collection, path_ = key[0], key[1:]
    name = torch_name(info, path_)
    if name not in state:
      missing.append(name)
      continue
    used.add(name)
    arr = _to_flax(np.asarray(state[name]), path_[-1])
    if arr.shape != shape:
      wrong.append(f"{name} {tuple(state[name].shape)} (expected "
                   f"{_torch_shape(shape, path_[-1])})")
      continue
    node = out.setdefault(collection, {})
    for p in path_[:-1]:
      node = node.setdefault(p, {})
    node[path_[-1]] = arr.astype(np.float32)
  unexpected = sorted(k for k in state if k not in used and
                      not any(re.search(p, k) for p in info.torch_ignore))
  if missing or wrong or unexpected:
    problems = []
    if missing:
      problems.append(f"{len(missing)} tensors missing ({_short(missing)})")
    if wrong:
      problems.append(f"{len(wrong)} of the wrong shape ({_short(wrong, 3)})")
    if unexpected:
      problems.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
    others = [m for m in _matching_models(state) if m != info.name]
    hint = (f"it matches --model={others[0]}" if others else
            f"pass a checkpoint of the {info.name} architecture")
    raise CheckpointError(f"{path} is not a {info.name} checkpoint: {'; '.join(problems)}; "
                          f"{hint}.")
  _check_frontend(info, state, path)
  return out
