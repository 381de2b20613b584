"""Write PyTorch-format zip checkpoints from numpy, for tests (no torch needed).

Emits the same pickle torch.save does: tensors as torch._utils._rebuild_tensor_v2 over
storages that live in archive/data/<key>. Pickle must import the globals it names, so stand-in
`torch` modules are placed in sys.modules only while writing.
"""

import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.bool_): "BoolStorage"}


@contextlib.contextmanager
def _fake_torch():
  saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):  # never called; only its name is pickled
    raise AssertionError(args)

  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in _STORAGE_NAMES.values():
    setattr(torch, name, type(name, (), {"__module__": "torch"}))
  torch._utils = utils
  sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
  try:
    yield torch, utils
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


class _Tensor:
  def __init__(self, key, arr):
    self.key, self.arr = key, arr


def save_pth(obj, path):
  """obj: nested dicts/lists/tuples with numpy arrays as tensors."""
  storages = {}

  def wrap(o):
    if isinstance(o, np.ndarray):
      key = str(len(storages))
      storages[key] = np.array(o, order="C")  # ascontiguousarray would make 0-d 1-d
      return _Tensor(key, storages[key])
    if isinstance(o, dict):
      return collections.OrderedDict((k, wrap(v)) for k, v in o.items())
    if isinstance(o, (list, tuple)):
      return type(o)(wrap(v) for v in o)
    return o

  with _fake_torch() as (torch, utils):

    class Pickler(pickle.Pickler):

      def persistent_id(self, o):
        if isinstance(o, tuple) and len(o) == 2 and o[0] == "__storage__":
          key = o[1]
          arr = storages[key]
          return ("storage", getattr(torch, _STORAGE_NAMES[arr.dtype]), key, "cpu", arr.size)
        return None

      def reducer_override(self, o):
        if isinstance(o, _Tensor):
          stride = tuple(s // o.arr.itemsize for s in o.arr.strides)
          return (utils._rebuild_tensor_v2,
                  (("__storage__", o.key), 0, o.arr.shape, stride, False,
                   collections.OrderedDict()))
        return NotImplemented

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(wrap(obj))
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", buf.getvalue())
    zf.writestr("archive/byteorder", "little")
    for key, arr in storages.items():
      zf.writestr(f"archive/data/{key}", arr.tobytes())
    zf.writestr("archive/version", "3\n")
