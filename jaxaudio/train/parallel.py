"""Two thin wrappers around the pure steps: jax.pmap, and jax.jit over a device Mesh.

pmap: state replicated with a leading device axis, batches [devices, per_device, ...],
gradients/metrics averaged and BatchNorm statistics synchronised over axis "batch".
jit: state replicated (NamedSharding P()), batches sharded over mesh axis "data"; XLA
inserts the collectives. Both give the parameters one device gets with the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxaudio.runtime import xla_cpu
from jaxaudio.train import steps

PMAP_AXIS = "batch"
MESH_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  """1-D data-parallel mesh over every device. Auto axes: XLA propagates shardings through
  the step (JAX 0.10's make_mesh defaults to Explicit axes, under which a cross-example op
  such as mixup's permutation must be annotated by hand)."""
  return jax.make_mesh((jax.device_count(),), (MESH_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def host_copy(tree: Any) -> Any:
  """numpy copy of a replicated pytree: of each jax.Array, its first addressable copy (a
  global array that spans other processes cannot be read whole, and need not be)."""
  def copy(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)
  return jax.tree_util.tree_map(copy, tree)


def replicated(mesh: jax.sharding.Mesh | None = None) -> NamedSharding:
  """Every device of every process holds the whole array: how the state is checkpointed."""
  return NamedSharding(mesh or make_mesh(), P())


@dataclasses.dataclass
class Parallel:
  """The chosen wrapper: how state and batches are placed and how steps are compiled."""

  mode: str
  mesh: jax.sharding.Mesh | None
  train_step: Callable
  eval_step: Callable

  def put_state(self, state: Any) -> Any:
    """The state on the devices, where it stays between train and evaluation steps: for
    pmap one copy per local device along a leading axis (numpy arrays would be copied to
    the devices again at every call), for jit replicated over the mesh. `state` is host
    arrays or a replicated global state (global_state, a restored checkpoint)."""
    if self.mode == "pmap":
      devices = jax.local_devices()
      per_device = NamedSharding(jax.sharding.Mesh(np.array(devices), ("replica",)),
                                 P("replica"))
      return jax.tree_util.tree_map(
          lambda x: jax.device_put(np.broadcast_to(x, (len(devices),) + np.shape(x)),
                                   per_device), host_copy(state))
    return jax.device_put(state, replicated(self.mesh))

  def global_state(self, state: Any) -> Any:
    """`state` as global jax.Arrays replicated over every device of every process, what
    orbax saves with all processes taking part; no copy in jit mode, device-side in pmap."""
    if self.mode != "pmap":
      return state
    sharding = replicated()
    devices = sharding.mesh.local_devices

    def merge(x):
      on = {s.device: s.data for s in x.addressable_shards}
      return jax.make_array_from_single_device_arrays(
          x.shape[1:], sharding, [on[d].reshape(x.shape[1:]) for d in devices])
    return jax.tree_util.tree_map(merge, state)

  def get_state(self, state: Any) -> Any:
    """Host copy of the (replicated) state, from the first local replica."""
    def first(x):
      data = np.asarray(x.addressable_shards[0].data)
      # pmap shards keep the device axis with length 1; replicated jit shards are whole.
      return data[0] if self.mode == "pmap" and data.ndim == x.ndim else data
    return jax.tree_util.tree_map(first, state)


def make(mode: str, step_cfg: steps.StepConfig, mesh: jax.sharding.Mesh | None = None
         ) -> Parallel:
  """step_cfg must be built with axis_name=PMAP_AXIS (and BatchNorm axis) for pmap."""
  if mode == "pmap":
    train = jax.pmap(lambda s, b: steps.train_step(s, b, step_cfg), axis_name=PMAP_AXIS,
                     donate_argnums=(0,))
    evaluate = jax.pmap(lambda s, b: steps.eval_step(s, b, step_cfg), axis_name=PMAP_AXIS)
    return Parallel("pmap", None, train, evaluate)
  if mode == "jit":
    mesh = mesh or make_mesh()
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(MESH_AXIS))
    train = jax.jit(lambda s, b: steps.train_step(s, b, step_cfg), in_shardings=(repl, data),
                    out_shardings=(repl, repl), donate_argnums=(0,),
                    compiler_options=xla_cpu.train_step_options())
    evaluate = jax.jit(lambda s, b: steps.eval_step(s, b, step_cfg), in_shardings=(repl, data),
                       out_shardings=data)
    return Parallel("jit", mesh, train, evaluate)
  raise ValueError(f"parallel={mode!r} is not jit or pmap")
