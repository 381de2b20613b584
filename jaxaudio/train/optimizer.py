"""Parameter groups and the optimizer that gives each group its treatment.

Config: an ordered list of (regex over "/"-joined parameter paths, group); the first match
wins and every parameter must match. Group "frozen" gets optax.set_to_zero() (stateless, so
frozen leaves carry no optimizer state); every other group gets AdamW with its own learning
rate (a multiplier of train.learning_rate, warmup + cosine), weight decay on kernels only.
Gradient clipping sees trainable leaves only. With train.ema_decay > 0 the optimizer state
also carries an exponential moving average of the weights (`ParamsEma`), so it is
checkpointed and resumed with everything else; evaluation reads it (`evaluation_params`).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxaudio.runtime.errors import ConfigError

FROZEN = "frozen"


def flat_paths(tree: Any) -> dict[str, Any]:
  """{"backbone/block1/conv1/kernel": leaf, ...} in tree order."""
  return {"/".join(str(k.key) for k in kp): v
          for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assign_groups(params: Any, rules) -> dict[str, str]:
  """Path -> group by the first matching rule; ConfigError names uncovered parameters."""
  compiled = []
  for rule in rules:
    if len(rule) != 2:
      raise ConfigError(f"train.param_groups entry {rule!r} is not a (regex, group) pair.")
    try:
      compiled.append((re.compile(rule[0]), str(rule[1])))
    except re.error as err:
      raise ConfigError(f"train.param_groups regex {rule[0]!r} is invalid ({err}).") from err
  assignment, uncovered = {}, []
  for path in flat_paths(params):
    group = next((g for rx, g in compiled if rx.search(path)), None)
    if group is None:
      uncovered.append(path)
    else:
      assignment[path] = group
  if uncovered:
    raise ConfigError(f"train.param_groups leaves {len(uncovered)} parameters without a group "
                      f"({', '.join(uncovered[:6])}{' ...' if len(uncovered) > 6 else ''}); "
                      "add a rule that matches them, e.g. ('.*', 'head') last.")
  return assignment


def describe(assignment: dict[str, str], params: Any) -> str:
  """One line per group: how many tensors and parameters it holds (for the log)."""
  sizes = {p: int(getattr(v, "size", 0)) for p, v in flat_paths(params).items()}
  lines = []
  for group in sorted(set(assignment.values())):
    paths = [p for p, g in assignment.items() if g == group]
    lines.append(f"{group}: {len(paths)} tensors, {sum(sizes[p] for p in paths):,} params "
                 f"({', '.join(sorted({p.rsplit('/', 2)[0] for p in paths})[:6])})")
  return "\n".join(lines)


def labels_like(params: Any, assignment: dict[str, str]) -> Any:
  paths = iter(flat_paths(params))
  return jax.tree_util.tree_map(lambda _: assignment[next(paths)], params)


def trainable_mask(params: Any, assignment: dict[str, str]) -> Any:
  paths = iter(flat_paths(params))
  return jax.tree_util.tree_map(lambda _: assignment[next(paths)] != FROZEN, params)


def frozen_layer_groups(params: Any, assignment: dict[str, str], layer_groups,
                        prefix: str = "backbone") -> tuple[str, ...]:
  """Backbone layer groups whose every parameter is frozen: these run BatchNorm on running
  averages and sit behind a stop_gradient (see models.layers.frozen_prefix_length)."""
  frozen = []
  for name in layer_groups:
    paths = [p for p in assignment if p.startswith(f"{prefix}/{name}/")]
    if paths and all(assignment[p] == FROZEN for p in paths):
      frozen.append(name)
  return tuple(frozen)


def decay_mask(tree: Any) -> Any:
  """Weight decay on kernels only (not biases, BatchNorm scales or offsets)."""
  return jax.tree_util.tree_map_with_path(lambda kp, _: str(kp[-1].key) == "kernel", tree)


def schedules(cfg, groups, starts: dict[str, int] | None = None) -> dict[str, optax.Schedule]:
  """Warmup + cosine learning-rate schedule per non-frozen group, counted from the step the
  group starts training (`starts`, default 0; see train.stages) to train.num_steps."""
  out = {}
  starts = starts or {}
  mults = dict(cfg.group_lr_mult)
  for group in sorted(set(groups) - {FROZEN}):
    if group not in mults:
      raise ConfigError(f"parameter group '{group}' has no learning-rate multiplier; add it to "
                        f"train.group_lr_mult (now {sorted(mults)}).")
    peak = float(cfg.learning_rate) * float(mults[group])
    warmup = int(cfg.warmup_steps)
    out[group] = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(int(cfg.num_steps) - starts.get(group, 0), warmup + 1),
        end_value=peak * float(cfg.final_lr_fraction))
  return out


class ParamsEma(NamedTuple):
  """Optimizer state with an exponential moving average of the weights after each update."""

  inner: optax.OptState
  ema: Any          # like params
  count: jax.Array  # updates averaged so far


def with_params_ema(inner: optax.GradientTransformation, decay: float, trainable: Any
                    ) -> optax.GradientTransformation:
  """`inner`, plus an EMA of the updated weights: ema <- d ema + (1 - d) (params + updates)
  with d = min(decay, (1 + t) / (10 + t)) at update t, so early averages are not dominated
  by the starting weights. Frozen leaves are copied, never averaged (bitwise equal)."""

  def init(params):
    return ParamsEma(inner.init(params), jax.tree_util.tree_map(jnp.asarray, params),
                     jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    updates, inner_state = inner.update(updates, state.inner, params)
    t = state.count.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))

    def average(ema, p, u, train):
      if not train:
        return ema
      return (d * ema.astype(jnp.float32) + (1.0 - d) * (p + u).astype(jnp.float32)
              ).astype(ema.dtype)
    ema = jax.tree_util.tree_map(average, state.ema, params, updates, trainable)
    return updates, ParamsEma(inner_state, ema, state.count + 1)

  return optax.GradientTransformation(init, update)


def evaluation_params(params: Any, opt_state: Any) -> Any:
  """The weights a run evaluates, selects, tests and exports: the EMA when it keeps one."""
  return opt_state.ema if isinstance(opt_state, ParamsEma) else params


def make_optimizer(params: Any, cfg, rules=None, starts: dict[str, int] | None = None
                   ) -> tuple[optax.GradientTransformation, dict[str, str],
                              dict[str, optax.Schedule]]:
  """(tx, assignment, schedules) for `params` per the config's `train` section; `rules`
  replace train.param_groups (a gradual-unfreezing stage), `starts` shift group schedules."""
  assignment = assign_groups(params, cfg.param_groups if rules is None else rules)
  scheds = schedules(cfg, assignment.values(), starts)
  transforms = {FROZEN: optax.set_to_zero()}
  for group, sched in scheds.items():
    transforms[group] = optax.adamw(sched, b1=float(cfg.adam_b1), b2=float(cfg.adam_b2),
                                    eps=float(cfg.adam_eps),
                                    weight_decay=float(cfg.weight_decay), mask=decay_mask)
  chain = []
  if float(cfg.grad_clip_norm) > 0:
    chain.append(optax.masked(optax.clip_by_global_norm(float(cfg.grad_clip_norm)),
                              trainable_mask(params, assignment)))
  # set_to_zero acts last for frozen leaves: nothing upstream can give them an update.
  chain.append(optax.multi_transform(transforms, labels_like(params, assignment)))
  tx = optax.chain(*chain)
  if float(cfg.get("ema_decay", 0.0)) > 0:
    tx = with_params_ema(tx, float(cfg.ema_decay), trainable_mask(params, assignment))
  return tx, assignment, scheds
