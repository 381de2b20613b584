"""orbax behind one module: a run's checkpoints hold everything needed to continue it.

Each checkpoint is a Composite of `state` (step, params, batch_stats, optimizer state, RNG),
`data` (the grain iterator position) and `meta` (best score so far, early-stopping counter).
Kept: the latest `keep` checkpoints and the best one by the validation score.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxaudio.runtime.errors import CheckpointError
from jaxaudio.train import parallel


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(n=max(1, keep)),
      pp.BestN(get_metric_fn=lambda m: m["score"], n=1, keep_checkpoints_without_metrics=False),
  ])
  # best_fn makes orbax write each step's metrics to disk and read them back on resume;
  # without it a resumed run's BestN sees the old checkpoints without metrics and deletes
  # the best one (caught by the kill-and-resume test).
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                         enable_async_checkpointing=True,
                                         best_fn=lambda m: m["score"], best_mode="max")
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, iterator, meta: dict[str, Any],
         score: float) -> None:
  """Checkpoint `step`: `state` as replicated global jax.Arrays (Parallel.global_state), so
  every process takes part and orbax writes each array once; the call returns once the
  arrays are copied off the devices and writes in the background."""
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         data=grain.checkpoint.CheckpointSave(iterator),
                                         meta=ocp.args.JsonSave(meta)),
           metrics={"score": float(score)})


def _restore(mgr: ocp.CheckpointManager, step: int, **args):
  try:
    return mgr.restore(step, args=ocp.args.Composite(**args))
  except Exception as err:  # orbax raises many types for mismatched or damaged checkpoints
    raise CheckpointError(f"cannot restore checkpoint step {step} from {mgr.directory} ({err}); "
                          "a run of a different model or config wrote it: use another "
                          "--workdir.") from err


def restore(mgr: ocp.CheckpointManager, step: int, template: Any,
            sharding: jax.sharding.Sharding | None = None) -> tuple[Any, dict[str, Any]]:
  """(state shaped like `template`, meta) of checkpoint `step`: numpy arrays, or global
  jax.Arrays placed with `sharding` (parallel.replicated()) straight from the files."""
  host = parallel.host_copy(template)
  target = host if sharding is None else jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), host)
  restored = _restore(mgr, step, state=ocp.args.StandardRestore(target),
                      meta=ocp.args.JsonRestore())
  return restored["state"], dict(restored["meta"])


def restore_data(mgr: ocp.CheckpointManager, step: int, iterator) -> None:
  """Set the grain `iterator` to its position saved in checkpoint `step`."""
  _restore(mgr, step, data=grain.checkpoint.CheckpointRestore(iterator))
