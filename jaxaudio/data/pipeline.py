"""grain input pipeline over prepared data, shaped for the parallel wrappers.

Training: seeded shuffle each epoch (optionally class-balanced: BalancedSource), endless
repeat, global batches of which each JAX process reads its slice, optional worker processes
for prefetch; the iterator's state goes into orbax checkpoints
(grain.checkpoint.CheckpointSave) so a resumed run sees the same batches. Evaluation: every
window exactly once, the last batch padded and masked.
"""

from __future__ import annotations

from typing import Any, Iterator

import grain
import jax
import numpy as np

from jaxaudio.data.prepare import Prepared


class ToModelInput(grain.transforms.Map):
  """Stored record -> model input: float32 mel, int32 label (or float32 multi-hot)."""

  def __init__(self, multi_label: bool):
    self.multi_label = multi_label

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    label = element["label"]
    return {"mel": np.asarray(element["mel"], np.float32),
            "label": (np.asarray(label, np.float32) if self.multi_label
                      else np.asarray(label, np.int32)),
            "clip": np.asarray(element["clip"], np.int32),
            "mask": np.float32(1.0)}


def window_labels(source) -> np.ndarray:
  """Integer label of every record of a single-label `source`, in order."""
  return np.array([int(np.asarray(source[i]["label"])) for i in range(len(source))], np.int64)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> tuple[float, ...]:
  """windows / (classes x windows of the class), scikit-learn's "balanced" weights; a class
  without windows gets weight 0 (it never reaches the loss)."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  present = counts > 0
  weights = np.zeros(num_classes)
  weights[present] = len(labels) / (present.sum() * counts[present])
  return tuple(float(w) for w in weights)


class BalancedSource:
  """A view of a single-label source in which every class has as many records as the
  largest: each class's records in a seeded order, repeated (and the remainder drawn without
  replacement) up to that count. The shuffling sampler over it then draws every class
  equally often per epoch."""

  def __init__(self, source, labels: np.ndarray, seed: int):
    self._source = source
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    most = max(len(c) for c in classes)
    parts = []
    for members in classes:
      reps, extra = divmod(most, len(members))
      parts += [np.tile(rng.permutation(members), reps), rng.choice(members, extra, replace=False)]
    self._index = np.concatenate(parts).astype(np.int64)
    self._repr = f"BalancedSource({source!r}, classes={len(classes)}, per_class={most}, seed={seed})"

  def __repr__(self) -> str:   # grain compares it on restore
    return self._repr

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, index: int):
    return self._source[int(self._index[index])]


def per_process_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by the {process_count} JAX "
                     "processes; choose a multiple.")
  return global_batch // process_count


class ReadBlock(grain.transforms.Map):
  """Window indices -> the model-input batch of those records of `source`."""

  def __init__(self, source, multi_label: bool):
    self.source, self.to_input = source, ToModelInput(multi_label)

  def map(self, element: np.ndarray) -> dict[str, np.ndarray]:
    records = [self.to_input.map(self.source[int(i)]) for i in element]
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def train_loader(prepared: Prepared, split: str, global_batch: int, seed: int,
                 worker_count: int = 0, num_epochs: int | None = None,
                 balanced_labels: np.ndarray | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """Shuffled batches of `split` (endless, or `num_epochs` whole global batches), this
  process's slice of each; with `balanced_labels` (the split's window labels) every class is
  drawn equally often.

  One seeded order of the split, reshuffled each epoch, is cut into global batches, and
  process p reads the p-th slice of each, as eval_batches does: the batches a step trains on
  do not depend on how many processes share them, so one process with two devices and two
  processes with one each train alike. The iterator's position goes into checkpoints
  (grain.checkpoint.CheckpointSave).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  source = prepared.data_source(split)
  if balanced_labels is not None:
    source = BalancedSource(source, balanced_labels, seed)
  per_process = per_process_batch(global_batch, process_count)
  order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(num_epochs)
  slices = order.batch(per_process, drop_remainder=True)
  if num_epochs is not None:   # whole global batches only
    slices = slices[:len(slices) // process_count * process_count]
  batches = slices[process_index::process_count].map(ReadBlock(source, prepared.multi_label))
  loader = batches.to_iter_dataset()
  if worker_count:
    loader = loader.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return loader


def eval_batches(prepared: Prepared, split: str, global_batch: int,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every window of `split` exactly once across processes, in order, with a `mask`.

  Global batch b holds windows [b * global_batch, (b + 1) * global_batch); process p takes
  the p-th slice of it, so the processes' slices gathered in process order are the split in
  order. All processes yield the same number of batches (collectives need that), padding
  with masked copies of a real record.
  """
  return padded_batches(prepared.data_source(split), prepared.multi_label, global_batch,
                        process_index, process_count)


def padded_batches(source, multi_label: bool, global_batch: int,
                   process_index: int | None = None, process_count: int | None = None
                   ) -> Iterator[dict[str, np.ndarray]]:
  """eval_batches over any random-access `source` of {"mel", "label", "clip"} records."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  read = ReadBlock(source, multi_label)
  batch = per_process_batch(global_batch, process_count)
  for start in range(0, len(source), global_batch):
    first = start + process_index * batch
    real = list(range(first, min(first + batch, len(source))))
    out = read.map(real + [real[0] if real else 0] * (batch - len(real)))
    out["mask"][len(real):] = 0.0   # copies of a real record, masked
    yield out


def device_batch(batch: dict[str, np.ndarray], parallel: str, mesh: jax.sharding.Mesh | None = None,
                 axis: str = "data") -> dict[str, Any]:
  """Shape a process-local batch for the parallel wrapper.

  pmap: a leading per-local-device axis [devices, batch/devices, ...].
  jit: global jax.Arrays sharded over `axis` of `mesh`, assembled from every process's part.
  """
  if parallel == "pmap":
    n = jax.local_device_count()
    return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
  if parallel == "jit":
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
  raise ValueError(f"parallel={parallel!r} is not pmap or jit")
