"""Read the variables of a TensorFlow 1 checkpoint (index + data files) as numpy arrays.

TensorFlow is a jaxaudio dependency (TFDS, clu) but heavy to import, so it is imported here
only when a TF checkpoint is read. The checkpoint is addressed by its prefix: the musicnn
package's files are named `.index` / `.data-00000-of-00001` inside the model folder, so the
prefix is the folder plus "/" (its `checkpoint` file points at the authors' machine and is
not used).
"""

from __future__ import annotations

import os

import numpy as np

from jaxaudio.runtime.errors import CheckpointError


def checkpoint_prefix(path: str) -> str:
  """The TF checkpoint prefix for a folder holding `.index`, or a prefix given directly."""
  if os.path.isdir(path):
    path = os.path.join(path, "")
  if not os.path.isfile(path + ".index"):
    raise CheckpointError(f"{path}: no TensorFlow checkpoint here (no {path}.index); pass the "
                          "model folder of the musicnn package or a checkpoint prefix.")
  return path


def data_files(prefix: str) -> list[str]:
  """The checkpoint's files (index first, then data shards), which identify its contents."""
  folder, base = os.path.split(prefix)
  shards = sorted(f for f in os.listdir(folder or ".") if f.startswith(base + ".data-"))
  return [prefix + ".index"] + [os.path.join(folder, f) for f in shards]


def read_variables(path: str) -> dict[str, np.ndarray]:
  """{variable name: array} of every variable in the checkpoint at `path` (folder or prefix)."""
  prefix = checkpoint_prefix(path)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (heavy; edge of the package)
  try:
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
  except Exception as err:  # TF raises its own DataLossError / NotFoundError / ValueError
    raise CheckpointError(f"{prefix}: not a readable TensorFlow checkpoint ({err}); fetch the "
                          "model files again.") from err
  return {name: np.asarray(reader.get_tensor(name))
          for name in reader.get_variable_to_shape_map()}
