"""grain pipeline: shuffling, sharding coverage, masked eval, iterator resume, device shapes."""

import os
import subprocess
import sys
import textwrap

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxaudio.data import pipeline
from jaxaudio.data.prepare import prepare
from jaxaudio.models.registry import AISFX_SPEC
from datafixtures import data_config, write_class_folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pipe")
  root = write_class_folder(str(tmp / "clips"), per_class=8, seconds=2.5)
  cfg = data_config(tmp, f"folder:{root}", val_fraction=0.25, test_fraction=0.25)
  return prepare(cfg, AISFX_SPEC, progress=False)[0]


def _ids(batch):
  return list(zip(batch["clip"].tolist(), batch["mel"][:, 0, 0].tolist()))


def test_train_batches_shuffle_per_epoch_and_repeat(prepared):
  n = prepared.num_windows("train")
  it = iter(pipeline.train_loader(prepared, "train", global_batch=4, seed=0))
  b = next(it)
  assert b["mel"].shape == (4, 100, 96) and b["mel"].dtype == np.float32
  assert b["label"].dtype == np.int32 and np.all(b["mask"] == 1)
  one = iter(pipeline.train_loader(prepared, "train", global_batch=1, seed=0))
  epoch1 = [_ids(next(one))[0] for _ in range(n)]
  epoch2 = [_ids(next(one))[0] for _ in range(n)]
  assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2   # each epoch reshuffled
  again = iter(pipeline.train_loader(prepared, "train", global_batch=1, seed=0))
  assert [_ids(next(again))[0] for _ in range(n)] == epoch1      # seeded
  other = iter(pipeline.train_loader(prepared, "train", global_batch=1, seed=1))
  assert [_ids(next(other))[0] for _ in range(n)] != epoch1


@pytest.mark.parametrize("processes", [2, 3])
def test_process_slices_are_the_one_process_batches(prepared, processes):
  """Each global batch is the same whatever the number of processes: the processes' slices
  side by side are the one-process batch, and one epoch covers every window once."""
  n = prepared.num_windows("train")
  whole = pipeline.train_loader(prepared, "train", global_batch=processes, seed=0,
                                num_epochs=1, process_index=0, process_count=1)
  parts = [pipeline.train_loader(prepared, "train", global_batch=processes, seed=0,
                                 num_epochs=1, process_index=p, process_count=processes)
           for p in range(processes)]
  one = [_ids(b) for b in whole]
  sliced = [sum((_ids(b) for b in step), []) for step in zip(*parts)]
  assert sliced == one and len(one) == n // processes
  src = prepared.data_source("train")
  every = sorted((int(src[i]["clip"]), float(src[i]["mel"][0, 0])) for i in range(len(src)))
  seen = sum(one, [])   # one epoch, whole global batches only: no window twice
  assert len(seen) == len(set(seen)) == n // processes * processes and set(seen) <= set(every)


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_eval_counts_every_window_exactly_once(prepared, processes):
  n = prepared.num_windows("validation")
  per_process = [list(pipeline.eval_batches(prepared, "validation", 3 * processes, p, processes))
                 for p in range(processes)]
  assert len({len(b) for b in per_process}) == 1          # same number of steps everywhere
  # What evaluation's all-gather sees: each global batch as the processes' slices in
  # process order. Every window once, in the split's order.
  kept = [x for step in zip(*per_process) for b in step
          for x, m in zip(_ids(b), b["mask"]) if m == 1]
  assert len(kept) == n
  src = prepared.data_source("validation")
  assert kept == [(int(src[i]["clip"]), float(src[i]["mel"][0, 0])) for i in range(len(src))]
  padded = sum(int((b["mask"] == 0).sum()) for batches in per_process for b in batches)
  assert padded == sum(len(b) for b in per_process) * 3 - n


@pytest.mark.parametrize("balanced,workers", [(False, 0), (True, 0), (False, 2)])
def test_iterator_state_resumes_through_orbax(prepared, tmp_path, balanced, workers):
  """Also with worker processes (data.loader_workers, as the GPU and TPU configs set)."""
  from absl import flags
  flags.FLAGS.mark_as_parsed()   # grain's worker processes read absl flags; a CLI parses them
  labels = pipeline.window_labels(prepared.data_source("train")) if balanced else None

  def loader():
    return pipeline.train_loader(prepared, "train", global_batch=4, seed=5,
                                 balanced_labels=labels, worker_count=workers)

  it = iter(loader())
  for _ in range(7):
    next(it)
  mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  mgr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mgr.wait_until_finished()
  expected = [next(it) for _ in range(5)]
  fresh = iter(loader())
  mgr.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  got = [next(fresh) for _ in range(5)]
  it.close()   # stop the workers now, not at interpreter exit
  fresh.close()
  for a, b in zip(expected, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_device_batch_shapes_on_fake_devices(prepared, tmp_path):
  script = textwrap.dedent(f"""
      import os, json
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
      import jax, numpy as np
      from jaxaudio.data import pipeline
      from jaxaudio.data.prepare import open_prepared
      p = open_prepared({prepared.root!r})
      batch = next(iter(pipeline.train_loader(p, "train", global_batch=8, seed=0)))
      pm = pipeline.device_batch(batch, "pmap")
      mesh = jax.make_mesh((4,), ("data",))
      jt = pipeline.device_batch(batch, "jit", mesh)
      print(json.dumps({{"pmap": list(pm["mel"].shape), "jit": list(jt["mel"].shape),
                        "shards": len(jt["mel"].addressable_shards),
                        "shard": list(jt["mel"].addressable_shards[0].data.shape),
                        "same": bool(np.array_equal(np.asarray(jt["mel"]), batch["mel"]))}}))
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  import json
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got == {"pmap": [4, 2, 100, 96], "jit": [8, 100, 96], "shards": 4,
                 "shard": [2, 100, 96], "same": True}
