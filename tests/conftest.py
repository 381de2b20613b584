"""Shared fixtures: golden files, the real aiSFX checkpoint (fetched once), CLI runner."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(TESTS, "golden")
sys.path.insert(0, TESTS)
sys.path.insert(0, GOLDEN)

# The tiny runs of the suite compile the same programs again and again (folds, resumed runs,
# sweep trials, the processes of a pod): JAX's persistent cache shares the executables, in
# this process and every command a test starts (about a tenth of the suite's time). Fresh
# for each session; a cached executable computes what a new compilation would.
_XLA_CACHE = tempfile.mkdtemp(prefix="jaxaudio-test-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def golden():
  def load(name):
    return np.load(os.path.join(GOLDEN, name))
  return load


@pytest.fixture(scope="session")
def aisfx_checkpoint():
  """The verified aisfx==0.1.2 checkpoint: installed package, else the user cache, which
  `pip download` fills once (CI reaches the package index)."""
  from jaxaudio.weights import sources
  return sources.aisfx_checkpoint()


@pytest.fixture(scope="session")
def musicnn_checkpoint():
  """Folder of one verified musicnn 0.1.0 checkpoint (e.g. MTT_musicnn): installed package,
  else the user cache, which `pip download` fills once."""
  from jaxaudio.weights import sources
  return sources.musicnn_checkpoint


def run_cli(module, *args, env=None, timeout=300):
  """python -m <module> args...; returns CompletedProcess with text output."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=full_env, timeout=timeout, check=False)


@pytest.fixture
def cli():
  return run_cli


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A tiny run (3 tone classes, scratch init, probe then fine-tune): (workdir, test report).
  Shared by the evaluation, export and search tests."""
  from datafixtures import write_class_folder
  from jaxaudio.runs import configs
  from jaxaudio.workflows import finetune
  tmp = tmp_path_factory.mktemp("trained")
  clips = write_class_folder(str(tmp / "clips"), per_class=10, seconds=1.5)
  cfg = configs.base_config()
  cfg.data.source, cfg.data.prepared_dir = f"folder:{clips}", str(tmp / "prepared")
  cfg.data.val_fraction, cfg.data.test_fraction = 0.2, 0.3   # 3 test clips per class
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  cfg.train.update(num_steps=30, eval_every=10, log_every=10, batch_size=8, warmup_steps=3,
                   probe_steps=10, param_groups=(("^backbone/", "backbone"), ("^head/", "head")),
                   group_lr_mult={"head": 1.0, "backbone": 1.0}, learning_rate=1e-2)
  workdir = str(tmp / "run")
  return workdir, finetune.run(cfg, workdir)


@pytest.fixture(scope="session")
def multilabel_trained(tmp_path_factory):
  """A tiny multi-label run (3 tone classes, half of the clips also `tonal`) whose learning
  rate is too small to change the validation mAP, so early stopping (patience 1) ends it at
  step 10 of 40: (workdir, clip folder)."""
  import csv
  from datafixtures import write_class_folder
  from jaxaudio.runs import configs
  from jaxaudio.workflows import finetune
  tmp = tmp_path_factory.mktemp("multilabel")
  clips = write_class_folder(str(tmp / "clips"), per_class=8, seconds=1.5)
  with open(os.path.join(clips, "labels.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "label"])
    for cls in ("low", "mid", "high"):
      for i in range(8):
        w.writerow([f"{cls}/{cls}_{i}.wav", f"{cls};tonal" if i % 2 else cls])
  cfg = configs.base_config()
  cfg.data.source = f"csv:{os.path.join(clips, 'labels.csv')}"
  cfg.data.prepared_dir = str(tmp / "prepared")
  cfg.data.val_fraction, cfg.data.test_fraction = 0.25, 0.25
  cfg.model.init, cfg.model.widths = "scratch", (4, 8, 8, 16)
  cfg.train.update(num_steps=40, epochs=0, eval_every=5, log_every=5, batch_size=8,
                   probe_steps=0, learning_rate=1e-9, early_stop_patience=1,
                   param_groups=(("^backbone/", "backbone"), ("^head/", "head")),
                   group_lr_mult={"head": 1.0, "backbone": 1.0})
  cfg.evaluate.at_end = False
  workdir = str(tmp / "run")
  finetune.run(cfg, workdir)
  return workdir, clips
