"""The study a sweep's workers share: its storage, who runs which trial, and running one.

Optuna numbers trials in the order they are asked for. To take work, a worker holds the
study lock (a file lock in the sweep directory, plus a PostgreSQL advisory lock when the
study lives there) while it either continues an orphaned trial - RUNNING, its workdir on
this machine, its trial lock free because the process that ran it died - or asks for a new
one while the study holds fewer than n_trials; it records the trial's workdir and takes the
trial's lock before letting go. So two workers never run one trial, a killed trial continues
from its last checkpoint under its own number, and the study ends with exactly n_trials.

A trial is an ordinary run in DIR/trials/NNNN (config.json, checkpoints, TensorBoard,
log.txt); the pruner hears its fine-tuning validations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import socket
import sys
import time
import traceback
import warnings
from typing import Any, Iterator

import ml_collections
import optuna
import sqlalchemy

from jaxaudio.workflows import finetune
from jaxaudio.runtime.errors import ConfigError, JaxAudioError
from jaxaudio.tuning import space

log = logging.getLogger("jaxaudio")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)
SAMPLERS = ("tpe", "random", "grid")
optuna.logging.set_verbosity(optuna.logging.WARNING)   # the console carries our trial lines
PRUNERS = ("median", "halving", "none")


def storage_url(sweep_dir: str, url: str) -> str:
  """--storage, or a SQLite file in the sweep directory (nothing to set up on one machine)."""
  return url or f"sqlite:///{os.path.join(os.path.abspath(sweep_dir), 'study.db')}"


def redacted(url: str) -> str:
  """The storage URL without its password, for reports and messages."""
  try:
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except sqlalchemy.exc.ArgumentError:
    return url.split("@")[-1]


OPEN_ATTEMPTS = 5
_ALREADY_EXISTS = ("42P07", "42710")   # PostgreSQL: duplicate table, duplicate object (type)


def _lost_creation_race(err: Exception) -> bool:
  """Whether opening failed because another command created Optuna's tables at the same
  moment (machines started together on an empty database): a unique-key clash, or on
  PostgreSQL a table or enum type that appeared after this one checked. Opening again
  finds them."""
  if isinstance(err, sqlalchemy.exc.IntegrityError):
    return True
  orig = getattr(err, "orig", None)
  code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
  return isinstance(err, sqlalchemy.exc.ProgrammingError) and code in _ALREADY_EXISTS


def open_storage(url: str) -> optuna.storages.RDBStorage:
  """The RDB storage at `url`, or one sentence on why it cannot be reached."""
  kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {
      "pool_pre_ping": True}
  for attempt in range(OPEN_ATTEMPTS):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:  # sqlalchemy/driver errors of every kind
      if attempt < OPEN_ATTEMPTS - 1 and _lost_creation_race(err):
        time.sleep(1.0)
        continue
      first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
      raise ConfigError(f"cannot open the study storage {redacted(url)} ({first}); pass a "
                        "reachable --storage=postgresql://USER@HOST/DB or leave it unset for "
                        "a SQLite file in --workdir.") from None
  raise AssertionError("unreachable")


def make_sampler(name: str, seed: int, n_trials: int, params: list[space.Param]):
  if name == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  if name == "grid":
    return optuna.samplers.GridSampler(space.grid(params), seed=seed)
  # constant_liar: running trials count as bad guesses, so parallel workers spread out.
  return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(5, n_trials // 4),
                                    constant_liar=True)


def make_pruner(name: str):
  if name == "halving":
    return optuna.pruners.SuccessiveHalvingPruner()
  if name == "none":
    return optuna.pruners.NopPruner()
  return optuna.pruners.MedianPruner(n_startup_trials=5)


def load(storage, name: str, sampler=None, pruner=None, create: bool = False) -> optuna.Study:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if create:
      return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                 sampler=sampler, pruner=pruner, load_if_exists=True)
    return optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)


def trial_dir(sweep_dir: str, number: int) -> str:
  return os.path.join(os.path.abspath(sweep_dir), "trials", f"{number:04d}")


@contextlib.contextmanager
def _study_lock(sweep_dir: str, storage: optuna.storages.RDBStorage,
                name: str) -> Iterator[None]:
  """Held while a worker takes a trial: one machine's workers queue on a file lock; on
  PostgreSQL every machine's also on an advisory lock named after the study."""
  with open(os.path.join(sweep_dir, "study.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      if storage.engine.dialect.name != "postgresql":
        yield
        return
      key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
      with storage.engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
          yield
        finally:
          conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _lock_trial(workdir: str):
  """The trial's own lock file, held while a process runs it; None when another holds it."""
  os.makedirs(workdir, exist_ok=True)
  f = open(os.path.join(workdir, "trial.lock"), "a")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    return None
  return f


@dataclasses.dataclass
class Claim:
  """A trial this worker runs, with its trial lock held."""

  trial: optuna.Trial
  sampled: dict[str, Any]
  workdir: str
  lock: Any
  resumed: bool
  seconds_before: float = 0.0   # what earlier processes spent on it


def claim(study: optuna.Study, storage: optuna.storages.RDBStorage, params: list[space.Param],
          n_trials: int, sweep_dir: str) -> Claim | None:
  """An orphaned trial to continue, else a new one while the study holds fewer than
  n_trials; None when there is nothing left for this worker."""
  with _study_lock(sweep_dir, storage, study.study_name):
    trials = study.get_trials(deepcopy=False)
    for frozen in trials:
      if frozen.state != optuna.trial.TrialState.RUNNING:
        continue
      workdir = frozen.user_attrs.get("workdir")
      if workdir is None:   # its worker died between ask and recording the workdir
        workdir = trial_dir(sweep_dir, frozen.number)
      elif not os.path.isdir(workdir):
        continue          # another machine's trial, or still being set up there
      lock = _lock_trial(workdir)
      if lock is None:
        continue          # a live process runs it
      trial = optuna.Trial(study, frozen._trial_id)  # noqa: SLF001
      trial.set_user_attr("workdir", workdir)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampled = space.suggest(trial, params)   # the recorded values; any missing are drawn
      return Claim(trial, sampled, workdir, lock, resumed=True,
                   seconds_before=float(frozen.user_attrs.get("seconds", 0.0)))
    if len(trials) >= n_trials:
      return None
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      trial = study.ask()
      sampled = space.suggest(trial, params)
    workdir = trial_dir(sweep_dir, trial.number)
    trial.set_user_attr("workdir", workdir)
    trial.set_user_attr("host", socket.gethostname())
    # XLA's CPU results depend on the thread count: best_config.py names it.
    trial.set_user_attr("cores", len(os.sched_getaffinity(0)))
    lock = _lock_trial(workdir)
    return Claim(trial, sampled, workdir, lock, resumed=False)


@contextlib.contextmanager
def _log_to(path: str) -> Iterator[None]:
  """jaxaudio's log lines go to the trial's log.txt while it runs; the console keeps one
  line per trial."""
  logger = logging.getLogger("jaxaudio")
  handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  saved = logger.handlers, logger.level, logger.propagate
  logger.handlers, logger.propagate = [handler], False
  logger.setLevel(logging.INFO)
  try:
    yield
  finally:
    logger.handlers, logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])
    handler.close()


def _say(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _short(sampled: dict[str, Any]) -> str:
  def fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)
  return ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in sampled.items())


def run_trial(study: optuna.Study, c: Claim, base: ml_collections.ConfigDict,
              params: list[space.Param], embeddings_dir: str) -> optuna.trial.TrialState:
  """Run (or continue) one trial and tell the study how it ended."""
  trial = c.trial
  cfg = space.trial_config(base, params, c.sampled)
  cfg.evaluate.at_end = False   # the sweep evaluates its best trial, once, at the end
  probe = int(cfg.train.probe_steps)

  begin = time.perf_counter()

  def on_validation(step: int, score: float) -> None:
    # The probe trains the head on cached embeddings: cheap, and not comparable with other
    # trials' fine-tuning. The pruner hears the fine-tuning validations, by fine-tuning step.
    trial.set_user_attr("seconds", c.seconds_before + time.perf_counter() - begin)
    if step <= probe:
      return
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")   # a continued trial re-reports its last step
      trial.report(score, step - probe)
    if trial.should_prune():
      raise optuna.TrialPruned(step)

  state, value, reason, steps = optuna.trial.TrialState.FAIL, None, "", 0
  with _log_to(os.path.join(c.workdir, "log.txt")):
    log.info("sweep trial %d%s: %s", trial.number, " (continued)" if c.resumed else "",
             _short(c.sampled))
    try:
      out = finetune.run(cfg, c.workdir, on_validation=on_validation,
                           embeddings_dir=embeddings_dir, with_test=False)
      value = float(next(iter(out["validation_score"].values())))
      state, steps = optuna.trial.TrialState.COMPLETE, int(out["last_step"])
    except optuna.TrialPruned as pruned:
      state, steps = optuna.trial.TrialState.PRUNED, int(pruned.args[0])
      trial.set_user_attr("pruned_step", steps)
    except JaxAudioError as err:   # diverged, or a sampled setting the run refused
      reason = str(err)
      log.info("trial failed: %s", reason)
    except Exception as err:  # pylint: disable=broad-except  # a bug must not end the sweep
      reason = f"{type(err).__name__}: {err}"
      log.error("trial failed:\n%s", traceback.format_exc())
  seconds = c.seconds_before + time.perf_counter() - begin
  trial.set_user_attr("seconds", seconds)
  trial.set_user_attr("num_steps", int(cfg.train.num_steps))
  trial.set_user_attr("steps", steps)
  if reason:
    trial.set_user_attr("fail_reason", reason)
  c.lock.close()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None,
               state=state)
  if state == optuna.trial.TrialState.COMPLETE:
    _say(f"trial {trial.number} finished: value {value:.4f} in {seconds:.0f} s "
         f"({_short(c.sampled)})")
  elif state == optuna.trial.TrialState.PRUNED:
    _say(f"trial {trial.number} pruned at step {steps} after {seconds:.0f} s")
  else:
    _say(f"trial {trial.number} failed: {reason} (log: {c.workdir}/log.txt)")
  return state


def work(study: optuna.Study, storage: optuna.storages.RDBStorage,
         base: ml_collections.ConfigDict, params: list[space.Param], n_trials: int,
         sweep_dir: str) -> int:
  """Take and run trials until the study holds n_trials and none is orphaned here; returns
  how many this worker ran."""
  ran = 0
  embeddings_dir = os.path.join(os.path.abspath(sweep_dir), "cache")
  while (c := claim(study, storage, params, n_trials, sweep_dir)) is not None:
    if c.resumed:
      _say(f"trial {c.trial.number} continues from its last checkpoint in {c.workdir}")
    run_trial(study, c, base, params, embeddings_dir)
    ran += 1
  return ran


def check_same_sweep(study: optuna.Study, attrs: dict[str, str]) -> None:
  """The first command records the base config and space in the study; a command that
  joins with different ones would mix two sweeps, so it is refused."""
  have = study.user_attrs
  for key, value in attrs.items():
    if key not in have:
      study.set_user_attr(key, value)
    elif have[key] != value:
      raise ConfigError(f"the study {study.study_name} was started with a different {key}; "
                        "run the same --config, --sweep and overrides, or pass another "
                        "--study_name.")
