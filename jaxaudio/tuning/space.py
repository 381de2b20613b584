"""A sweep's search space: SPACE.py's `get_sweep()` read, checked against the config, and
turned into Optuna suggestions and trial configs.

`get_sweep()` (or `get_sweep(config)`, to build choices from the configured model) returns a
dict from config keys to distributions:

  ("loguniform", low, high)   float, sampled on a log scale (0 < low < high)
  ("uniform", low, high)      float (low < high)
  ("int", low, high)          integer, both ends included (low < high)
  ("choice", [v1, v2, ...])   one of the values; a value may be a tuple (param_groups)
  ("choice", {"name": v, ...}) the same, with the names Optuna records and plots show

Every key must exist in the config and every end of a range (every choice) must pass the
config's own validation, so a typo is one sentence before any trial starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
from typing import Any

import ml_collections
import optuna

from jaxaudio.runs import configs
from jaxaudio.runtime.errors import ConfigError

KINDS = ("loguniform", "uniform", "int", "choice")


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched config key: its Optuna distribution and, for choices, label -> value."""

  key: str
  distribution: optuna.distributions.BaseDistribution
  values: dict[str, Any] | None = None   # choice labels -> config values

  def value(self, sampled: Any) -> Any:
    """The config value for what Optuna sampled (a label for a choice)."""
    return self.values[sampled] if self.values is not None else sampled


def _label(value: Any) -> Any:
  """Optuna records None, bool, int, float and str; anything else by its JSON text."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return json.dumps(value)


def _get(cfg: ml_collections.ConfigDict, key: str) -> Any:
  node = cfg
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(key)
    node = node[part]
  return node


def set_value(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *parents, last = key.split(".")
  node = cfg
  for part in parents:
    node = node[part]
  node[last] = value


def _parse(key: str, spec: Any, where: str) -> Param:
  if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in KINDS:
    raise ConfigError(f"{where}: {key} has {spec!r}, not a distribution; write one of "
                      "('loguniform', low, high), ('uniform', low, high), ('int', low, high), "
                      "('choice', [values])")
  kind = spec[0]
  if kind == "choice":
    if len(spec) != 2 or not isinstance(spec[1], (list, tuple, dict)) or not spec[1]:
      raise ConfigError(f"{where}: {key} is an empty or malformed choice; write "
                        "('choice', [value, ...]) with at least one value")
    values = (dict(spec[1]) if isinstance(spec[1], dict)
              else {_label(v): v for v in spec[1]})
    if len(values) != len(spec[1]):
      raise ConfigError(f"{where}: {key} lists the same choice twice; list each value once")
    return Param(key, optuna.distributions.CategoricalDistribution(list(values)), values)
  if len(spec) != 3:
    raise ConfigError(f"{where}: {key} needs ('{kind}', low, high)")
  low, high = spec[1], spec[2]
  numbers = (int,) if kind == "int" else (int, float)
  if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in (low, high)):
    raise ConfigError(f"{where}: {key} range ({low!r}, {high!r}) must be "
                      f"{'integers' if kind == 'int' else 'numbers'}")
  if not low < high:
    raise ConfigError(f"{where}: {key} range ({low!r}, {high!r}) is empty or inverted; give "
                      "low < high")
  if kind == "loguniform" and low <= 0:
    raise ConfigError(f"{where}: {key} loguniform range starts at {low!r}; a log scale needs "
                      "low > 0")
  if kind == "int":
    return Param(key, optuna.distributions.IntDistribution(low, high))
  return Param(key, optuna.distributions.FloatDistribution(float(low), float(high),
                                                           log=kind == "loguniform"))


def _ends(param: Param) -> list[Any]:
  d = param.distribution
  if param.values is not None:
    return list(param.values.values())
  return [d.low, d.high]


def load(path: str, cfg: ml_collections.ConfigDict) -> list[Param]:
  """The parsed, checked space of SPACE.py at `path` for the base config `cfg`."""
  if not os.path.isfile(path):
    raise ConfigError(f"no such sweep file {path}; pass --sweep=configs/sweeps/recipe.py or "
                      "a file defining get_sweep().")
  where = os.path.basename(path)
  try:
    spec = importlib.util.spec_from_file_location("jaxaudio_sweep_space", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_sweep = module.get_sweep
    raw = get_sweep(cfg) if inspect.signature(get_sweep).parameters else get_sweep()
  except ConfigError:
    raise
  except Exception as err:  # whatever the user's file raised
    raise ConfigError(f"cannot load the sweep {path} ({type(err).__name__}: {err}); it must "
                      "define get_sweep() returning {config key: distribution}.") from err
  if not isinstance(raw, dict) or not raw:
    raise ConfigError(f"{where}: get_sweep() returned {type(raw).__name__}, not a non-empty "
                      "dict from config keys to distributions.")
  params = []
  for key, dist in raw.items():
    try:
      _get(cfg, key)
    except KeyError:
      raise ConfigError(f"{where}: unknown config key {key}; docs/reference/config.md lists "
                        "every key (e.g. train.learning_rate).") from None
    param = _parse(key, dist, where)
    for end in _ends(param):   # every end of the range must make a valid config
      trial_cfg = ml_collections.ConfigDict(cfg.to_dict())
      try:
        set_value(trial_cfg, key, end)
        configs.validate(trial_cfg)
      except ConfigError as err:
        raise ConfigError(f"{where}: {key}={end!r} is not a valid setting ({err})") from None
      except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {key}={end!r} does not fit the key's type ({err}); give "
                          f"values like {_get(cfg, key)!r}.") from None
    params.append(param)
  return params


def suggest(trial: optuna.Trial, params: list[Param]) -> dict[str, Any]:
  """Optuna's samples for every parameter (labels for choices), recorded in the trial."""
  out = {}
  for p in params:
    d = p.distribution
    if isinstance(d, optuna.distributions.CategoricalDistribution):
      out[p.key] = trial.suggest_categorical(p.key, d.choices)
    elif isinstance(d, optuna.distributions.IntDistribution):
      out[p.key] = trial.suggest_int(p.key, d.low, d.high)
    else:
      out[p.key] = trial.suggest_float(p.key, d.low, d.high, log=d.log)
  return out


def trial_config(cfg: ml_collections.ConfigDict, params: list[Param],
                 sampled: dict[str, Any]) -> ml_collections.ConfigDict:
  """The base config with the trial's values set."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  for p in params:
    set_value(out, p.key, p.value(sampled[p.key]))
  return out


def grid(params: list[Param]) -> dict[str, list[Any]]:
  """Optuna GridSampler's search space: choices and integer ranges only."""
  out = {}
  for p in params:
    d = p.distribution
    if isinstance(d, optuna.distributions.CategoricalDistribution):
      out[p.key] = list(d.choices)
    elif isinstance(d, optuna.distributions.IntDistribution):
      out[p.key] = list(range(d.low, d.high + 1))
    else:
      raise ConfigError(f"--sampler=grid cannot enumerate {p.key} (a continuous range); use "
                        "choice or int distributions, or --sampler=tpe.")
  return out
