"""A sweep command from start to end: open (or join) the study, prepare the data once,
start the worker processes with their share of the cores, show progress over trials, then
report and evaluate the best trial once on the test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import ml_collections
import numpy as np
import optuna

from jaxaudio.runs import configs
from jaxaudio.data.prepare import prepare
from jaxaudio.runtime.errors import JaxAudioError
from jaxaudio.evaluation import validation
from jaxaudio.evaluation.heldout import evaluate_run
from jaxaudio.models.registry import get_model
from jaxaudio.runtime.progress import progress
from jaxaudio.tuning import space, study, summary

TEST_KEYS = ("accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "mAP", "mAP_ci95",
             "micro_f1", "ece", "num_examples")


def cpu_shares(workers: int) -> list[set[int]]:
  """The cores each worker may use: this process's cores dealt out evenly (shared round
  robin when there are more workers than cores)."""
  cpus = sorted(os.sched_getaffinity(0))
  if workers > len(cpus):
    return [{cpus[i % len(cpus)]} for i in range(workers)]
  return [set(int(c) for c in chunk) for chunk in np.array_split(cpus, workers)]


def _forward(stream, bar) -> None:
  for line in stream:
    bar.write(line.rstrip("\n"), file=sys.stderr)


def _run_workers(argv: list[str], workers: int, st: optuna.Study, n_trials: int) -> list[int]:
  """`python -m jaxaudio.sweep ARGS --worker=i` for each worker, pinned to its cores; their
  lines above a progress bar over the study's finished trials. Returns their exit codes."""
  finished = lambda: len(st.get_trials(deepcopy=False, states=study.FINISHED))  # noqa: E731
  bar = progress(n_trials, "sweep", "trial", initial=min(finished(), n_trials), interval=0)
  procs, threads = [], []
  for i, cores in enumerate(cpu_shares(workers)):
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "jaxaudio.sweep", *argv[1:], f"--worker={i}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
        preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores))
    thread = threading.Thread(target=_forward, args=(proc.stderr, bar), daemon=True)
    thread.start()
    procs.append(proc)
    threads.append(thread)
  try:
    while any(p.poll() is None for p in procs):
      time.sleep(1.0)
      done = min(finished(), n_trials)
      if done != bar.n:   # redraw on news only: a log file gets a line per trial, not per second
        bar.update(done - bar.n)
  finally:
    for thread in threads:
      thread.join(timeout=5)
    bar.update(min(finished(), n_trials) - bar.n)
    bar.close()
  return [p.returncode for p in procs]


def _test_once(previous: dict[str, Any] | None, best: dict[str, Any]) -> dict[str, Any]:
  """The best trial's test metrics with bootstrap intervals (DIR/trials/N/report/
  evaluation.*), computed once: a later command with the same best trial reuses them."""
  if previous and (previous.get("best") or {}).get("number") == best["number"] and \
      previous.get("test"):
    return previous["test"]
  if not os.path.isdir(best["workdir"]):   # a PostgreSQL study's trial from another machine
    return {"skipped": f"the best trial ran in {best['workdir']}, not on this machine; "
                       "evaluate it there: python -m jaxaudio.evaluate "
                       f"--workdir={best['workdir']}"}
  result = evaluate_run(best["workdir"], "test", "best", bootstrap=1000)
  test = {k: result["classification"][k] for k in TEST_KEYS if k in result["classification"]}
  test["report"] = os.path.join(best["workdir"], "report", "evaluation.md")
  test["note"] = summary.TEST_NOTE
  return test


def run(argv: list[str], cfg: ml_collections.ConfigDict, sweep_path: str, sweep_dir: str,
        n_trials: int, workers: int, storage_flag: str, sampler: str, pruner: str,
        study_name: str, seed: int, worker: int, evaluate: bool) -> dict[str, Any] | None:
  """The sweep command (worker < 0), or one of its worker processes."""
  configs.validate(cfg)
  params = space.load(sweep_path, cfg)
  if sampler == "grid":
    n_trials = min(n_trials, int(np.prod([len(v) for v in space.grid(params).values()])))
  sweep_dir = os.path.abspath(sweep_dir)
  os.makedirs(sweep_dir, exist_ok=True)
  url = study.storage_url(sweep_dir, storage_flag)
  storage = study.open_storage(url)
  if worker >= 0:
    started = len(study.load(storage, study_name).get_trials(deepcopy=False))
    st = study.load(storage, study_name, study.make_sampler(
        sampler, seed * 1_000_003 + started * 101 + worker, n_trials, params),
                    study.make_pruner(pruner))
    study.work(st, storage, cfg, params, n_trials, sweep_dir)
    return None
  st = study.load(storage, study_name, create=True)
  study.check_same_sweep(st, {
      "config": cfg.to_json_best_effort(sort_keys=True),
      "space": json.dumps([[p.key, repr(p.distribution)] for p in params]),
      "sampler": sampler, "pruner": pruner})
  # Prepared once here; trials with these data settings open it from the cache.
  prepared, _ = prepare(cfg.data, get_model(cfg.model.name).spec)
  objective = validation.score_name(cfg, prepared.multi_label)
  print(f"sweep {study_name}: {n_trials} trials, {workers} worker(s) here, storage "
        f"{study.redacted(url)}, trials in {os.path.join(sweep_dir, 'trials')}",
        file=sys.stderr, flush=True)
  trials = st.get_trials(deepcopy=False)
  done = len(trials) >= n_trials and all(t.state in study.FINISHED for t in trials)
  codes = [] if done else _run_workers(argv, workers, st, n_trials)
  if any(codes):
    print(f"warning: worker exit codes {codes}; their lines above say why", file=sys.stderr)
  result = summary.summarise(st, objective, n_trials, study.redacted(url))
  previous_path = os.path.join(sweep_dir, "report", "sweep.json")
  previous = json.load(open(previous_path)) if os.path.isfile(previous_path) else None
  if result["best"] and evaluate:
    result["test"] = _test_once(previous, result["best"])
  summary.write(sweep_dir, result, st, cfg, params)
  if not result["best"]:
    raise JaxAudioError(f"no trial of the sweep in {sweep_dir} completed "
                        f"({result['counts']['FAIL']} failed, {result['counts']['PRUNED']} "
                        "pruned); the reasons are in report/sweep.md.")
  return result

