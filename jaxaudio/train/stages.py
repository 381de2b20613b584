"""Linear probing and gradual unfreezing: which parameter-group rules hold at each step.

`train.probe_steps = N` trains the head alone for the first N steps (the whole backbone
frozen, so it runs on cached embeddings, see train.head_only) before `train.param_groups`
take over: linear probing then fine-tuning, which starts the unfrozen blocks against a
trained head instead of a random one.

`train.unfreeze` is an ordered tuple of (step, regex, group): from `step` on, the
parameters matching `regex` belong to `group` (e.g. (50, "^backbone/block4/", "backbone")).
Stage rules are the entries reached so far, latest first, ahead of `train.param_groups`
(first match wins), so a later entry overrides an earlier one.

A stage applies to the updates at steps [start, next start). When it begins, the optimizer
is rebuilt for the new assignment and the state of every parameter whose group is unchanged
(Adam moments, the group's step count) is carried over bit for bit; newly trained parameters
start with fresh state. Each group's learning-rate schedule starts when the group first
trains and runs to train.num_steps, so a group unfrozen late still gets its warmup.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxaudio.runtime.errors import ConfigError
from jaxaudio.train import optimizer


@dataclasses.dataclass(frozen=True)
class Plan:
  """Stage start steps and the rules of each stage."""

  starts: tuple[int, ...]                 # starts[0] == 0
  rules: tuple[tuple[tuple[str, str], ...], ...]

  def index(self, step: int) -> int:
    """Stage that performs the update taking the state from `step` to `step + 1`."""
    return int(np.searchsorted(self.starts, step, side="right")) - 1

  def group_starts(self, params: Any) -> dict[str, int]:
    """First step at which each non-frozen group trains (its schedule starts there)."""
    out: dict[str, int] = {}
    for start, rules in zip(self.starts, self.rules):
      for group in set(optimizer.assign_groups(params, rules).values()) - {optimizer.FROZEN}:
        out.setdefault(group, start)
    return out


PROBE_RULE = ("^backbone/", "frozen")


def plan(train_cfg) -> Plan:
  """Stages from train.probe_steps and train.unfreeze (validated: increasing steps inside
  the run, none inside the probe)."""
  entries = [tuple(e) for e in train_cfg.unfreeze]
  base = tuple(tuple(r) for r in train_cfg.param_groups)
  probe = int(train_cfg.probe_steps)
  if not 0 <= probe < int(train_cfg.num_steps):
    raise ConfigError(f"config key train.probe_steps={probe} is invalid; use 0 (off) or fewer "
                      f"steps than train.num_steps ({train_cfg.num_steps}).")
  starts, rules, last = [0], [((PROBE_RULE,) if probe else ()) + base], 0
  if probe:
    starts.append(probe)
    rules.append(base)
    last = probe
  for entry in entries:
    if len(entry) != 3:
      raise ConfigError(f"train.unfreeze entry {entry!r} is not a (step, regex, group) "
                        "triple; write e.g. (50, '^backbone/block4/', 'backbone').")
    step = int(entry[0])
    if not last < step < int(train_cfg.num_steps):
      where = ", the end of train.probe_steps" if probe and last == probe else ""
      raise ConfigError(f"train.unfreeze step {step} must be after the previous stage "
                        f"(step {last}{where}) and before train.num_steps "
                        f"({train_cfg.num_steps}).")
    reached = [(str(e[1]), str(e[2])) for e in entries if int(e[0]) <= step]
    starts.append(step)
    rules.append(tuple(reversed(reached)) + base)
    last = step
  return Plan(tuple(starts), tuple(rules))


def transplant(new: Any, old: Any) -> Any:
  """`new` (a fresh optimizer state) with every leaf that `old` holds at the same path and
  with the same shape and dtype taken from `old`: unchanged groups keep their state."""
  old_leaves = {jax.tree_util.keystr(kp): v
                for kp, v in jax.tree_util.tree_flatten_with_path(old)[0]}

  def pick(kp, leaf):
    prev = old_leaves.get(jax.tree_util.keystr(kp))
    if prev is not None and np.shape(prev) == np.shape(leaf) and \
        np.asarray(prev).dtype == np.asarray(leaf).dtype:
      return prev
    return leaf
  return jax.tree_util.tree_map_with_path(pick, new)
