"""`python -m jaxaudio.sweep`: the space's errors, pruning, a two-process SQLite study killed
and resumed, and two commands sharing a study on a real PostgreSQL server."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import ml_collections
import numpy as np
import optuna
import pytest

from jaxaudio.runs import configs
from jaxaudio.runtime.errors import ConfigError
from jaxaudio.tuning import space, study, summary

SPACE = '''
def get_sweep():
  return {"train.learning_rate": ("loguniform", 1e-3, 3e-2),
          "train.head_dropout": ("uniform", 0.0, 0.5)}
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """Tone clips prepared once, the overrides of a tiny scratch model, and a space file."""
  from datafixtures import write_class_folder
  tmp = tmp_path_factory.mktemp("sweep")
  clips = write_class_folder(str(tmp / "clips"), per_class=8, seconds=1.2)
  (tmp / "space.py").write_text(SPACE)
  overrides = {
      "data.source": f"folder:{clips}", "data.prepared_dir": str(tmp / "prepared"),
      "data.val_fraction": 0.25, "data.test_fraction": 0.25, "model.init": "scratch",
      "model.widths": (4, 8, 8, 16), "train.num_steps": 30, "train.eval_every": 10,
      "train.log_every": 10, "train.batch_size": 8,
      "train.param_groups": (("^backbone/", "backbone"), ("^head/", "head"))}
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  cfg = configs.base_config()
  for k, v in overrides.items():
    space.set_value(cfg, k, v)
  return {"tmp": tmp, "flags": flags, "cfg": cfg, "space": str(tmp / "space.py")}


def _space_file(tmp_path, body):
  path = tmp_path / "bad_space.py"
  path.write_text(f"def get_sweep():\n  return {body}\n")
  return str(path)


@pytest.mark.parametrize("body, message", [
    ("{'train.learnig_rate': ('loguniform', 1e-4, 1e-2)}", "unknown config key train.learnig_rate"),
    ("{'train.learning_rate': ('loguniform', 1e-2, 1e-4)}", "is empty or inverted"),
    ("{'train.learning_rate': ('uniform', 0.1, 0.1)}", "is empty or inverted"),
    ("{'train.learning_rate': ('loguniform', 0.0, 1e-2)}", "a log scale needs low > 0"),
    ("{'train.learning_rate': ('lognormal', 1e-4, 1e-2)}", "not a distribution"),
    ("{'train.probe_steps': ('choice', [])}", "empty or malformed choice"),
    ("{'train.probe_steps': ('int', 0.5, 3)}", "must be integers"),
    ("{'train.label_smoothing': ('uniform', 0.0, 1.5)}", "train.label_smoothing=1.5 is not a valid"),
    ("{'train.bn': ('choice', ['batch', 'frozen'])}", "train.bn='frozen' is not a valid"),
    ("{'train.learning_rate': ('choice', ['fast'])}", "does not fit the key.s type"),
    ("[]", "not a non-empty dict"),
])
def test_space_errors_are_one_sentence_naming_the_key(tmp_path, body, message):
  with pytest.raises(ConfigError, match=message) as err:
    space.load(_space_file(tmp_path, body), configs.base_config())
  assert "\n" not in str(err.value)


def test_space_values_labels_and_grid(tmp_path):
  path = _space_file(tmp_path, "{'train.param_groups': ('choice', {'head': (('^backbone/', "
                     "'frozen'), ('^head/', 'head'))}), 'train.probe_steps': ('choice', [0, 5]),"
                     " 'train.augment.time_masks': ('int', 0, 2)}")
  params = space.load(path, configs.base_config())
  assert space.grid(params) == {"train.param_groups": ["head"], "train.probe_steps": [0, 5],
                                "train.augment.time_masks": [0, 1, 2]}
  cfg = space.trial_config(configs.base_config(), params, {
      "train.param_groups": "head", "train.probe_steps": 5, "train.augment.time_masks": 2})
  assert cfg.train.param_groups == (("^backbone/", "frozen"), ("^head/", "head"))
  assert (cfg.train.probe_steps, cfg.train.augment.time_masks) == (5, 2)
  with pytest.raises(ConfigError, match="cannot enumerate train.learning_rate"):
    space.grid(space.load(_space_file(tmp_path, "{'train.learning_rate': ('uniform', 0.1, 1)}"),
                          configs.base_config()))
  # The shipped space loads for every fetchable model.
  for name in ("aisfx", "musicnn_mtt", "vgg_msd"):
    cfg = configs.base_config()
    cfg.model.name = name
    params = space.load("configs/sweeps/recipe.py", cfg)
    unfreeze = next(p for p in params if p.key == "train.param_groups")
    assert len(unfreeze.values) >= 2


def test_unreachable_storage_exits_2_with_one_sentence_and_no_password(tiny, tmp_path, cli):
  r = cli("jaxaudio.sweep", f"--workdir={tmp_path / 'b'}", f"--sweep={tiny['space']}",
          "--storage=postgresql://someone:secret@127.0.0.1:1/optuna", *tiny["flags"])
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: cannot open the study storage postgresql://someone:***@"
                         "127.0.0.1:1/optuna (") and "secret" not in r.stderr


def test_pruner_stops_a_trial_below_the_crafted_history(tiny, capsys):
  """Five finished trials reported 1.0 at every fine-tuning validation; a trial that cannot
  learn (learning rate 1e-9) is pruned at its first fine-tuning validation, with that
  checkpoint on disk; its probe validation was not reported. A second trial trains its probe
  on the embeddings the first one saved."""
  sweep_dir = str(tiny["tmp"] / "pruning")
  os.makedirs(sweep_dir)
  path = tiny["tmp"] / "space_lr.py"
  path.write_text("def get_sweep():\n  return {'train.learning_rate': ('choice', [1e-9])}\n")
  cfg = ml_collections.ConfigDict(tiny["cfg"].to_dict())
  cfg.train.probe_steps = 10
  params = space.load(str(path), cfg)
  storage = study.open_storage(study.storage_url(sweep_dir, ""))
  st = optuna.create_study(storage=storage, study_name="p", direction="maximize",
                           pruner=study.make_pruner("median"))
  for _ in range(5):
    st.add_trial(optuna.trial.create_trial(
        value=1.0, params={"train.learning_rate": 1e-9},
        distributions={"train.learning_rate": params[0].distribution},
        intermediate_values={10: 1.0, 20: 1.0}))
  c = study.claim(st, storage, params, 7, sweep_dir)
  assert (c.trial.number, c.resumed) == (5, False)
  state = study.run_trial(st, c, cfg, params, os.path.join(sweep_dir, "cache"))
  assert state == optuna.trial.TrialState.PRUNED
  t = st.trials[5]
  assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["pruned_step"] == 20
  assert list(t.intermediate_values) == [10]   # fine-tuning step 10 = step 20; probe unheard
  ckpts = sorted(int(d) for d in os.listdir(os.path.join(c.workdir, "checkpoints"))
                 if d.isdigit())
  assert ckpts[-1] == 20
  assert "trial 5 pruned at step 20" in capsys.readouterr().err
  rows = summary.trial_rows(st)
  p = summary.pruning(rows)
  assert p["pruned"] == 1
  assert p["seconds_saved"] == pytest.approx(t.user_attrs["seconds"] / 20 * 10)
  cached = glob.glob(os.path.join(sweep_dir, "cache", "embeddings-aisfx-*.npz"))
  assert len(cached) == 1
  c2 = study.claim(st, storage, params, 7, sweep_dir)
  study.run_trial(st, c2, cfg, params, os.path.join(sweep_dir, "cache"))
  log = open(os.path.join(c2.workdir, "log.txt")).read()
  assert f"shared embeddings in {cached[0]}" in log and "embedded" not in log
  assert study.claim(st, storage, params, 7, sweep_dir) is None   # 7 trials: nothing left


@pytest.mark.parametrize("values", [(0.5, 0.5, 0.5), (0.2, 0.9, 0.4, 0.7)])
def test_importances_or_the_reason_there_are_none(tmp_path, values):
  """Importances need scores that differ: equal scores give no plot and the reason in the
  report; differing ones give fANOVA's numbers (summing to 1) and the plot of those numbers."""
  dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
          "probe": optuna.distributions.CategoricalDistribution([0, 5])}
  st = optuna.create_study(direction="maximize")
  for i, v in enumerate(values):
    st.add_trial(optuna.trial.create_trial(value=v, params={"lr": 10 ** -(2 + i / 2),
                                                             "probe": [0, 5][i % 2]},
                                           distributions=dist))
  s = summary.summarise(st, "accuracy", len(values), "memory")
  written = summary.plots(st, str(tmp_path), s["importances"])
  names = sorted(os.path.basename(p) for p in written)
  if len(set(values)) == 1:
    assert s["importances"] == {}
    assert s["importances_note"] == ("all 3 completed trials scored 0.5: no parameter "
                                     "explains a difference")
    assert "None: all 3 completed trials scored 0.5" in summary.markdown(s, str(tmp_path))
    assert names == ["optimization_history.png", "parallel_coordinate.png"]
  else:
    # By hand: probe 0 scored 0.2, 0.4 and probe 5 0.9, 0.7; probe's two means explain
    # 0.0625 of the scores' variance 0.0725 (86%), lr (one value per trial) the rest.
    assert list(s["importances"]) == ["probe", "lr"] and s["importances_note"] == ""
    assert s["importances"]["probe"] > 0.5 > s["importances"]["lr"] > 0
    assert sum(s["importances"].values()) == pytest.approx(1.0)
    assert "param_importances.png" in names
    assert os.path.getsize(tmp_path / "param_importances.png") > 5000


def test_importances_find_the_parameter_the_score_depends_on(tmp_path, monkeypatch):
  """16 trials whose score is a function of the learning rate alone (dropout and probe drawn
  at random): the learning rate carries almost all the importance, as two other estimators
  (random-forest impurity, PED-ANOVA) computed on the same study also say; the plot's bars
  are the report's numbers."""
  rng = np.random.default_rng(0)
  dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
          "probe": optuna.distributions.CategoricalDistribution([0, 5]),
          "dropout": optuna.distributions.FloatDistribution(0.0, 0.5)}
  st = optuna.create_study(direction="maximize")
  for _ in range(16):
    lr = 10 ** rng.uniform(-4, -2)
    st.add_trial(optuna.trial.create_trial(
        value=0.5 + 0.2 * (np.log10(lr) + 3), distributions=dist,
        params={"lr": lr, "probe": int(rng.integers(0, 2)) * 5, "dropout": rng.uniform(0, 0.5)}))
  imp = summary.summarise(st, "accuracy", 16, "memory")["importances"]
  assert list(imp)[0] == "lr" and imp["lr"] > 0.9 and imp["probe"] + imp["dropout"] < 0.1
  assert list(imp.values()) == sorted(imp.values(), reverse=True)
  for evaluator in (optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0),
                    optuna.importance.PedAnovaImportanceEvaluator()):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      other = optuna.importance.get_param_importances(st, evaluator=evaluator)
    assert list(other)[0] == "lr" and other["lr"] > 0.9, (evaluator, other)
  drawn = []
  real_plot = optuna.visualization.matplotlib.plot_param_importances

  def recording_plot(*a, **kw):
    ax = real_plot(*a, **kw)
    drawn.append({t.get_text(): p.get_width()
                  for t, p in zip(ax.get_yticklabels(), ax.patches)})
    return ax

  monkeypatch.setattr(optuna.visualization.matplotlib, "plot_param_importances", recording_plot)
  summary.plots(st, str(tmp_path), imp)
  assert len(drawn) == 1 and drawn[0] == pytest.approx(imp)


def _sweep_cmd(tiny, workdir, *extra):
  return [sys.executable, "-m", "jaxaudio.sweep", f"--workdir={workdir}",
          f"--sweep={tiny['space']}", "--sampler=random", "--pruner=none", *tiny["flags"],
          *extra]


def _trials(url, name="sweep"):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)  # the sweep makes them
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_two_workers_killed_and_resumed_end_with_exactly_n_trials(tiny):
  workdir = str(tiny["tmp"] / "killed")
  url = f"sqlite:///{workdir}/study.db"
  cmd = _sweep_cmd(tiny, workdir, "--n_trials=2", "--workers=2")
  # Killed at an event: every trial pauses once its checkpoint 10 is on disk
  # (tests/pausing), so none can finish between looking and killing.
  from datafixtures import pausing_env
  paused = tiny["tmp"] / "paused"
  paused.mkdir()
  first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True, env=pausing_env(10, paused))
  while not os.listdir(paused) and first.poll() is None:
    time.sleep(0.2)
  assert os.listdir(paused), first.stderr.read().decode()[-3000:]
  running = {}
  for t in _trials(url):
    ckpt = os.path.join(t.user_attrs.get("workdir", "/nonexistent"), "checkpoints")
    steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
    if t.state == optuna.trial.TrialState.RUNNING and steps:
      running[t.number] = max(steps)
  assert running and set(running.values()) == {10}, running
  os.killpg(first.pid, signal.SIGKILL)
  first.wait()
  killed = {t.number: t for t in _trials(url) if t.state == optuna.trial.TrialState.RUNNING}
  assert set(running) <= set(killed)

  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  trials = _trials(url)
  assert sorted(t.number for t in trials) == [0, 1]
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  assert len({t.user_attrs["workdir"] for t in trials}) == 2
  for number in killed:   # continued under its own number; from its checkpoint if it had one
    log = open(os.path.join(trials[number].user_attrs["workdir"], "log.txt")).read()
    assert f"sweep trial {number} (continued)" in log
    assert ("resumed from step" in log) == (number in running) or number not in running
    assert f"trial {number} continues from its last checkpoint" in r.stderr
  assert all("resumed from step" in open(os.path.join(trials[n].user_attrs["workdir"],
                                                      "log.txt")).read() for n in running)
  for t in trials:
    assert t.user_attrs["steps"] == 30
  report = json.load(open(f"{workdir}/report/sweep.json"))
  assert [(x["number"], x["state"]) for x in report["trials"]] == [(i, "COMPLETE")
                                                                   for i in range(2)]
  best = max(trials, key=lambda t: (t.value, -t.number))
  assert report["best"]["number"] == best.number and report["best"]["value"] == best.value
  assert "not used to make it" in report["test"]["note"] and 0 <= report["test"]["accuracy"] <= 1
  assert os.path.isfile(os.path.join(best.user_attrs["workdir"], "report", "evaluation.json"))
  for name in ("optimization_history", "parallel_coordinate"):
    assert os.path.getsize(f"{workdir}/report/{name}.png") > 5000
  # two tone trials often both score 1.0: then no importances (test_importances_* covers both)
  assert os.path.isfile(f"{workdir}/report/param_importances.png") == bool(
      report["importances"]) != bool(report["importances_note"])
  assert len(os.listdir(f"{workdir}/tensorboard")) == 2
  assert "best trial" in r.stdout and "(not used to choose)" in r.stdout
  # stderr is a pipe here, as in a log: progress comes as whole lines, never a redrawn bar
  assert "\r" not in r.stderr and "sweep: 2/2 trials (100%, " in r.stderr

  # best_config.py reproduces the best trial bit for bit on as many cores as it had.
  cores = best.user_attrs["cores"]
  rerun = subprocess.run(["taskset", "-c", f"0-{cores - 1}", sys.executable, "-m",
                          "jaxaudio.main", f"--config={workdir}/best_config.py",
                          f"--workdir={workdir}/best"], capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  out = json.loads(rerun.stdout.strip().splitlines()[-2])
  assert out["validation_score"]["macro_f1"] == best.value


def _pg_binary(name):
  found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
  assert found, f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)"
  return found if isinstance(found, str) else found[-1]


@pytest.fixture
def postgres():
  """A throwaway PostgreSQL server on a unix socket in a temporary directory; as root, it
  runs as the `postgres` system user (initdb refuses root)."""
  base = tempfile.mkdtemp(prefix="jaxaudio-pg-")
  os.chmod(base, 0o777)
  as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
  data = os.path.join(base, "data")
  subprocess.run(as_user + [_pg_binary("initdb"), "-D", data, "-U", "jaxaudio",
                            "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
  opts = f"-c listen_addresses='' -c unix_socket_directories={base} -p 5433"
  subprocess.run(as_user + [_pg_binary("pg_ctl"), "-D", data, "-o", opts, "-w", "-l",
                            os.path.join(base, "log"), "start"], check=True, capture_output=True)
  try:
    yield f"postgresql://jaxaudio@/postgres?host={base}&port=5433"
  finally:
    subprocess.run(as_user + [_pg_binary("pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def test_two_commands_share_a_postgresql_study(tiny, postgres):
  """Two sweep commands with their own directories (two machines) on one PostgreSQL study:
  three trials in all, each run once, by one of them."""
  dirs = [str(tiny["tmp"] / f"pg{i}") for i in (0, 1)]
  procs = [subprocess.Popen(_sweep_cmd(tiny, d, "--n_trials=3", f"--storage={postgres}",
                                       "--evaluate=false", "--config.train.num_steps=20"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for d in dirs]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  trials = _trials(postgres)
  assert sorted(t.number for t in trials) == [0, 1, 2]
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
  for t in trials:   # ran where its workdir says, and only there
    where = [d for d in dirs if os.path.isdir(os.path.join(d, "trials", f"{t.number:04d}"))]
    assert where == [os.path.dirname(os.path.dirname(t.user_attrs["workdir"]))]
  ran = [sum(f"trial {t.number} finished" in err for t in trials) for _, err in outs]
  assert sum(ran) == 3
  # A command reports when it has nothing left to run; the one that ended last saw all three.
  reports = [json.load(open(os.path.join(d, "report", "sweep.json"))) for d in dirs]
  final = [x for x in reports if x["counts"]["COMPLETE"] == 3]
  best = max(trials, key=lambda t: (t.value, -t.number))
  assert final and all(x["best"]["number"] == best.number for x in final)
  assert reports[0]["storage"].startswith("postgresql://jaxaudio@/postgres")


def test_commands_opening_a_fresh_postgresql_storage_together_all_get_it(postgres, tmp_path):
  """Machines started at once on an empty database race to create Optuna's tables (one
  sees `relation "studies" already exists` or `type "alembic_version" already exists`);
  each opens the storage all the same. The processes import first, then open together or
  a little apart (the unique-key clash of simultaneous creation, the existing table of
  a late one)."""
  go = tmp_path / "go"
  code = ("import os, sys, time; from jaxaudio.tuning.study import open_storage; "
          "print('ready', flush=True)\n"
          "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
          "time.sleep(float(sys.argv[3])); open_storage(sys.argv[1]); print('opened')")
  procs = [subprocess.Popen([sys.executable, "-c", code, postgres, str(go), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for delay in (0.0, 0.0, 0.05, 0.1, 0.2)]
  for p in procs:
    assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
  go.touch()
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and out.strip() == "opened", err[-2000:]
  assert study.open_storage(postgres).get_all_studies() == []
