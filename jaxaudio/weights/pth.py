"""Read PyTorch .pth/.pt checkpoints with numpy alone: no torch, and no code from the file.

A .pth is a pickle whose tensors point at raw storages (zip members in the current format,
a trailing blob in the legacy one). The unpickler below admits only the globals needed to
rebuild tensors, storages, plain containers and numpy scalars; any other global, the way a
hostile file would reach os.system, raises CheckpointError naming it, before anything runs.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from jaxaudio.runtime.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: Any


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  dtype: Any
  offset: int = 0  # elements, for legacy storage views


@dataclasses.dataclass(frozen=True)
class _LazyTensor:
  """A tensor whose storage bytes may not have been read yet (the legacy format stores them
  after the pickle)."""
  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _safe_dtype(*args):
  dt = np.dtype(*args)
  if dt.hasobject:
    raise CheckpointError("checkpoint asks for a numpy object dtype, which could hold code; "
                          "refusing to load it.")
  return dt


def _numpy_scalar(dtype, data=None):
  dt = _safe_dtype(dtype)
  return np.frombuffer(data, dt, count=1)[0] if data is not None else dt.type(0)


def _latin1_encode(text, encoding="latin1"):
  if encoding not in ("latin1", "latin-1"):
    raise CheckpointError(f"checkpoint asks for codec '{encoding}'; refusing to load it.")
  return codecs.encode(text, encoding)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, file, path: str, legacy: bool):
    super().__init__(file)
    self._path = path
    self._legacy = legacy

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise CheckpointError(
        f"{self._path}: refused to load global '{module}.{name}': a weights file needs only "
        "tensor and storage globals, so this one may run code; get the weights from a "
        "trusted source.")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise CheckpointError(f"{self._path}: unknown persistent id {pid!r}; this is not a "
                            "PyTorch tensor checkpoint.")
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
      raise CheckpointError(f"{self._path}: storage of unknown type {storage_type!r}.")
    offset = 0
    if self._legacy and len(pid) > 5 and pid[5] is not None:
      view_key, offset, _ = pid[5]
      del view_key
    return _StorageRef(key, storage_type.dtype, int(offset))


def _materialise(obj, storages: dict[str, np.ndarray], path: str):
  if isinstance(obj, _LazyTensor):
    flat = storages[obj.storage.key].view(obj.storage.dtype)[obj.storage.offset:]
    if int(np.prod(obj.size)) == 0:
      return np.zeros(obj.size, flat.dtype)
    last = obj.offset + sum((s - 1) * st for s, st in zip(obj.size, obj.stride))
    if obj.offset < 0 or last >= flat.size:
      raise CheckpointError(f"{path}: a tensor reaches past the end of its storage; the file "
                            "is truncated or corrupt, download it again.")
    view = np.lib.stride_tricks.as_strided(
        flat[obj.offset:], shape=obj.size, strides=[s * flat.itemsize for s in obj.stride])
    return np.array(view)
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v, storages, path)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, storages, path) for v in obj)
  return obj


def _storage_keys(obj, out: dict[str, Any]):
  if isinstance(obj, _LazyTensor):
    out[obj.storage.key] = obj.storage.dtype
  elif isinstance(obj, dict):
    for v in obj.values():
      _storage_keys(v, out)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      _storage_keys(v, out)
  return out


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pkl:
      raise CheckpointError(f"{path}: zip archive without data.pkl; this is not a PyTorch "
                            "checkpoint.")
    prefix = pkl[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = zf.read(prefix + "byteorder").decode().strip()
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, legacy=False).load()
    storages = {}
    for key, dtype in _storage_keys(obj, {}).items():
      member = f"{prefix}data/{key}"
      if member not in names:
        raise CheckpointError(f"{path}: storage '{member}' is missing; the file is truncated "
                              "or corrupt, download it again.")
      arr = np.frombuffer(zf.read(member), np.uint8)
      if byteorder == "big":
        arr = arr.view(np.dtype(dtype).newbyteorder(">")).astype(dtype).view(np.uint8)
      storages[key] = arr
  return _materialise(obj, storages, path)


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    header = _RestrictedUnpickler(f, path, legacy=True)
    if header.load() != _LEGACY_MAGIC:
      raise CheckpointError(f"{path}: not a PyTorch checkpoint (no zip archive and no legacy "
                            "magic number); check the file.")
    header.load()  # protocol version
    sys_info = header.load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise CheckpointError(f"{path}: big-endian legacy checkpoints are not supported; re-save "
                            "it with torch.save on a little-endian machine.")
    obj = _RestrictedUnpickler(f, path, legacy=True).load()
    keys = _RestrictedUnpickler(f, path, legacy=True).load()
    dtypes = _storage_keys(obj, {})
    storages = {}
    for key in keys:
      (numel,) = struct.unpack("<q", f.read(8))
      itemsize = np.dtype(dtypes.get(key, np.uint8)).itemsize
      raw = f.read(numel * itemsize)
      if len(raw) != numel * itemsize:
        raise CheckpointError(f"{path}: storage data ends early; the file is truncated, "
                              "download it again.")
      storages[key] = np.frombuffer(raw, np.uint8)
  return _materialise(obj, storages, path)


def load_pth(path: str | os.PathLike) -> Any:
  """Load a PyTorch checkpoint as nested dicts/tuples of numpy arrays (torch layout)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such checkpoint file; check the path.")
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    return _load_legacy(path)
  except CheckpointError:
    raise
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error, ValueError,
          KeyError, IndexError, TypeError, AttributeError, OSError) as err:
    raise CheckpointError(f"{path}: cannot read this PyTorch checkpoint ({type(err).__name__}: "
                          f"{err}); the file is truncated or corrupt, download it again.") from err
