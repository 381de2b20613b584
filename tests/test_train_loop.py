"""The training run end to end: report, bitwise resume after SIGKILL, divergence guard."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from datafixtures import pausing_env, saved_state, write_class_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("loop")
  return str(tmp), write_class_folder(str(tmp / "clips"), per_class=8, seconds=1.5)


def args(tmp, clips, workdir, steps=24):
  return [sys.executable, "-m", "jaxaudio.main", "--config=configs/finetune.py",
          f"--workdir={workdir}", f"--config.data.source=folder:{clips}",
          f"--config.data.prepared_dir={tmp}/prepared", "--config.model.init=scratch",
          "--config.model.widths=(4,8,8,16)", f"--config.train.num_steps={steps}",
          "--config.train.eval_every=6", "--config.train.log_every=6",
          "--config.train.batch_size=8", "--config.train.warmup_steps=3",
          # The default recipe's shape: a linear probe on cached embeddings up to the step-12
          # checkpoint the kill waits for, then block 4 on log-mels, then block 3 from step 18:
          # the resume crosses both kinds of stage.
          "--config.train.probe_steps=12",
          "--config.train.unfreeze=((18, '^backbone/block3/', 'backbone'),)",
          # The weight average lives in the optimizer state: it must cross stages and resume.
          "--config.train.ema_decay=0.8"]


def leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_run_report_and_bitwise_resume_after_kill(dataset):
  tmp, clips = dataset
  whole = subprocess.run(args(tmp, clips, f"{tmp}/whole"), capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
  assert whole.returncode == 0, whole.stderr[-3000:]
  report = json.load(open(f"{tmp}/whole/report/test_metrics.json"))
  assert set(report) >= {"accuracy", "macro_precision", "macro_recall", "macro_f1",
                         "num_examples", "per_class"}
  assert report["num_examples"] == 3 and set(report["per_class"]) == {"high", "low", "mid"}
  assert set(report["per_class"]["low"]) == {"precision", "recall", "f1", "support"}
  assert os.path.getsize(f"{tmp}/whole/report/confusion_matrix.png") > 1000
  assert os.listdir(f"{tmp}/whole/tensorboard")

  # Killed at an event: the run pauses once checkpoint 12 is on disk, before step 13.
  paused = os.path.join(tmp, "paused")
  os.makedirs(paused)
  proc = subprocess.Popen(args(tmp, clips, f"{tmp}/killed"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env=pausing_env(12, paused))
  while not os.listdir(paused) and proc.poll() is None:
    time.sleep(0.05)
  assert os.listdir(paused) == [str(proc.pid)], proc.stderr.read()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_at_kill = sorted(int(d) for d in os.listdir(f"{tmp}/killed/checkpoints") if d.isdigit())
  assert 12 in steps_at_kill and 24 not in steps_at_kill
  again = subprocess.run(args(tmp, clips, f"{tmp}/killed"), capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step" in again.stderr
  a, b = leaves(saved_state(f"{tmp}/whole", 24)), leaves(saved_state(f"{tmp}/killed", 24))
  assert len(a) == len(b) > 20
  for x, y in zip(a, b):
    assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
  assert json.load(open(f"{tmp}/killed/report/test_metrics.json"))["macro_f1"] == \
      report["macro_f1"]
  # Evaluation, export and search read the average, not the raw weights.
  from jaxaudio.runs.rundir import open_run
  run = open_run(f"{tmp}/whole", 24)
  saved = saved_state(f"{tmp}/whole", 24)
  ema, raw = leaves(saved["opt_state"]["ema"]), leaves(saved["params"])
  assert [x.tobytes() for x in leaves(run.variables["params"])] == [x.tobytes() for x in ema]
  assert any(x.tobytes() != y.tobytes() for x, y in zip(ema, raw))


def test_divergence_stops_with_a_clear_message(dataset, monkeypatch, tmp_path):
  from jaxaudio.runs import configs
  from jaxaudio.workflows import finetune
  from jaxaudio.train import fit, parallel
  tmp, clips = dataset
  real_make = parallel.make

  # A slow disk, as on a loaded CI machine: the async save's final rename (of step 100's
  # folder) lags behind training. Events, not sleeps, order it: the first poisoned step waits
  # until that rename has begun, and the rename until the divergence error closes the
  # checkpoint manager, which must then wait for the step-100 checkpoint to be complete.
  import threading
  import orbax.checkpoint as ocp
  from orbax.checkpoint._src.path import async_path  # pylint: disable=import-outside-toplevel
  rename_begun, closing = threading.Event(), threading.Event()
  renaming, lagging, pending_at_close = {"100": False}, [], []
  bound = 300   # seconds; only a hang reaches it, and then the assertions below fail

  def poisoned_make(*a, **kw):
    par = real_make(*a, **kw)
    real_step, calls = par.train_step, {"n": 0}

    def step(state, batch):
      state, metrics = real_step(state, batch)
      calls["n"] += 1
      if calls["n"] > 142:   # after the step-140 console line, the loss "explodes"
        rename_begun.wait(bound)
        metrics = dict(metrics, loss=metrics["loss"] * np.nan)
        lagging.append(renaming["100"])
      return state, metrics

    par.train_step = step
    return par

  monkeypatch.setattr(fit.parallel, "make", poisoned_make)
  real_rename, real_close = async_path.rename, ocp.CheckpointManager.close

  async def slow_rename(src, dst, *a, **kw):
    if os.path.basename(str(dst)) != "100":
      return await real_rename(src, dst, *a, **kw)
    renaming["100"] = True
    rename_begun.set()
    for _ in range(bound * 100):
      if closing.is_set():
        break
      await asyncio.sleep(0.01)
    result = await real_rename(src, dst, *a, **kw)
    renaming["100"] = False
    return result

  def close(self):
    if lagging:   # the divergence error's close, after the poisoned steps
      pending_at_close.append(renaming["100"])
      closing.set()
    return real_close(self)

  monkeypatch.setattr(async_path, "rename", slow_rename)
  monkeypatch.setattr(ocp.CheckpointManager, "close", close)
  cfg = configs.base_config()
  cfg.data.source, cfg.data.prepared_dir = f"folder:{clips}", f"{tmp}/prepared"
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  # The default intervals (a console line every 20 steps, a checkpoint every 50): step 150
  # is saved between two console lines, so its poisoned state must be caught before saving.
  assert (cfg.train.log_every, cfg.train.eval_every) == (20, 50)
  cfg.train.update(num_steps=160, batch_size=8, warmup_steps=3, probe_steps=0, epochs=0)
  with pytest.raises(fit.TrainingDiverged, match=r"became nan by step 150; the last good "
                                                  r"checkpoint \(step 100\) is intact"):
    finetune.run(cfg, str(tmp_path / "wd"))
  assert lagging[0], "the poisoned steps ran after step 100's save was complete: no lag tested"
  assert pending_at_close[:1] == [True], "the error did not close while step 100 was pending"
  assert sorted(os.listdir(tmp_path / "wd" / "checkpoints"), key=int) == ["50", "100"]
  assert len(leaves(saved_state(str(tmp_path / "wd"), 100))) > 20


def test_head_only_run_trains_on_cached_embeddings(dataset, tmp_path, caplog):
  from jaxaudio.runs import configs
  from jaxaudio.models.registry import get_model
  from jaxaudio.workflows import finetune
  from jaxaudio.train import factory
  tmp, clips = dataset
  cfg = configs.base_config()
  cfg.data.source, cfg.data.prepared_dir = f"folder:{clips}", f"{tmp}/prepared"
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  cfg.train.update(num_steps=12, eval_every=6, log_every=6, batch_size=8, warmup_steps=3,
                   probe_steps=0,
                   param_groups=(("^backbone/", "frozen"), ("^head/", "head")))
  wd = str(tmp_path / "wd")
  with caplog.at_level("INFO", logger="jaxaudio"):
    report = finetune.run(cfg, wd)
  assert "training the head on cached embeddings" in caplog.text
  assert "embedded 24 windows once" in caplog.text
  assert report["num_examples"] == 3
  fresh = factory.build(get_model("aisfx"), 3, cfg.train, widths=(4, 8, 8, 16)).state
  import jax
  saved = saved_state(wd, 12)
  flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v)
                    for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  a, b = flat(fresh.params["backbone"]), flat(saved["params"]["backbone"])
  assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
  assert np.abs(saved["params"]["head"]["kernel"] - np.asarray(fresh.params["head"]["kernel"])
                ).max() > 1e-4
  tb = os.path.join(wd, "tensorboard")   # the trainer's events and the final evaluation's
  events = b"".join(open(os.path.join(tb, f), "rb").read() for f in sorted(os.listdir(tb)))
  assert events.count(b"evaluate_pr_curves") == 1
  assert events.count(b"eval_logmel") == 2 and events.count(b"eval_confusion_matrix") == 2
  # The run opens again for evaluation/search: label map, best step, the same weights.
  from jaxaudio.runtime.errors import CheckpointError
  from jaxaudio.runs import rundir
  run = rundir.open_run(wd)
  assert run.classes == ["high", "low", "mid"] and not run.multi_label
  assert run.step == report["best_step"]
  best = flat(saved_state(wd, run.step)["params"])
  opened = flat(run.variables["params"])
  assert best.keys() == opened.keys() and all(best[k].tobytes() == opened[k].tobytes()
                                              for k in best)
  assert len(run.weights_sha256()) == 64
  out = run.model.apply(run.variables, np.zeros((2, 100, 96), np.float32))
  assert out["logits"].shape == (2, 3)
  with pytest.raises(CheckpointError, match="has no config.json; pass the --workdir"):
    rundir.open_run(str(tmp_path))


def test_recipe_options_in_a_run(dataset, tmp_path, caplog):
  """epochs set num_steps from the prepared data; balanced sampling and class weights read
  the train windows' labels; BatchNorm on running averages leaves the statistics as they
  were initialised through fine-tuning."""
  from jaxaudio.runs import configs
  from jaxaudio.workflows import finetune
  tmp, clips = dataset
  cfg = configs.base_config()
  cfg.data.source, cfg.data.prepared_dir = f"folder:{clips}", f"{tmp}/prepared"
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  cfg.train.update(epochs=3.0, eval_every=6, log_every=3, batch_size=8, warmup_steps=2,
                   probe_steps=0, bn="running", label_smoothing=0.1, class_weights="balanced",
                   sampling="balanced")
  cfg.evaluate.at_end = False
  wd = str(tmp_path / "wd")
  with caplog.at_level("INFO", logger="jaxaudio"):
    finetune.run(cfg, wd)
  assert "train.epochs=3 over 18 training windows: 7 steps (probe 0)" in caplog.text
  assert "train windows per class: high 6, low 6, mid 6" in caplog.text
  assert json.load(open(os.path.join(wd, "config.json")))["train"]["num_steps"] == 7
  import jax
  from jaxaudio.models.registry import get_model
  from jaxaudio.train import factory
  fresh = factory.build(get_model("aisfx"), 3, cfg.train, widths=(4, 8, 8, 16)).state
  saved = saved_state(wd, 7)
  assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(
      jax.tree_util.tree_leaves(fresh.batch_stats), jax.tree_util.tree_leaves(saved["batch_stats"])))
