"""A pod on one machine: launch/local.sh runs 2 JAX processes (one CPU device each, gloo
collectives over loopback), the same program a TPU pod or a GPU cluster runs per host.

Against a 1-process run on 2 devices with the same config, crossing the probe -> fine-tune
boundary: bitwise equal final parameters and equal reports, continuous scores to rounding
(the global batches do not depend on the number of processes); both processes SIGKILLed and
relaunched end bitwise equal to an uninterrupted run; one process killed alone takes the
other down."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from datafixtures import pausing_env, saved_state, write_class_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 18


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pod")
  return str(tmp), write_class_folder(str(tmp / "clips"), per_class=10, seconds=1.5)


def config(tmp, clips, mode, steps=STEPS):
  return [f"--config.data.source=folder:{clips}", f"--config.data.prepared_dir={tmp}/prepared",
          "--config.data.val_fraction=0.2", "--config.data.test_fraction=0.3",  # 3 clips a class
          "--config.model.init=scratch", "--config.model.widths=(4,8,8,16)",
          f"--config.train.num_steps={steps}", "--config.train.eval_every=6",
          "--config.train.log_every=6", "--config.train.batch_size=8",
          "--config.train.warmup_steps=3", "--config.train.learning_rate=0.01",
          # a probe on cached embeddings (each process embeds its slice), then blocks 2-4
          "--config.train.probe_steps=6", f"--config.parallel={mode}",
          # robustness (a perturbation sweep, seconds a run) once, in the jit runs: the sweep
          # is the same code under both wrappers
          "--config.evaluate.retrieval=True", f"--config.evaluate.robustness={mode == 'jit'}",
          "--config.evaluate.bootstrap=50"]


def env(devices=1):
  return dict(os.environ, PYTHON=sys.executable,
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def local_sh(workdir, cfg, extra_env=None):
  return subprocess.Popen(["bash", "launch/local.sh", "2", workdir, *cfg], cwd=ROOT,
                          env=dict(env(), **(extra_env or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)


def one_process(workdir, cfg):
  """The same job as one process on 2 devices, started in the background: much of a tiny
  run is single-threaded Python (imports, tracing), so it overlaps well with the pod's."""
  return subprocess.Popen([sys.executable, "-m", "jaxaudio.main", f"--workdir={workdir}", *cfg],
                          cwd=ROOT, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def bitwise_equal(a, b):
  import jax
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb) > 20
  return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(la, lb))


def assert_same_report(a, b, path="report"):
  """Equal reports: every count, decision and label exactly; continuous scores (ECE,
  average precision, retrieval, robustness) to 1e-8 absolute or 1e-6 relative. A pod's
  end-of-run evaluation has put one window's float32 probability an ulp from one process's in some
  runs (ECE 0.2110470238 against 0.2110470250, 2026-12-07, AVX2 EPYC) while its parameters
  were bitwise equal and `jaxaudio.evaluate` on the same checkpoint matched one process
  bitwise 3 times of 3. An ulp moves a score 1.4e-9 here; a changed decision moves it 1e-2."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and sorted(a) == sorted(b), (path, sorted(a), b)
    for k in a:
      assert_same_report(a[k], b[k], f"{path}.{k}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), (path, a, b)
    for i, (x, y) in enumerate(zip(a, b)):
      assert_same_report(x, y, f"{path}[{i}]")
  elif isinstance(a, float) and isinstance(b, float):
    assert a == pytest.approx(b, rel=1e-6, abs=1e-8), (path, a, b)
  else:
    assert a == b, (path, a, b)


def report(workdir):
  test = json.load(open(f"{workdir}/report/test_metrics.json"))
  test.pop("train_seconds")
  evaluation = json.load(open(f"{workdir}/report/evaluation.json"))
  evaluation.pop("workdir")
  return test, evaluation


@pytest.fixture(scope="module")
def pod_runs(dataset):
  """mode -> workdir of an uninterrupted 2-process run (made on first need, then shared)."""
  tmp, clips = dataset
  runs = {}

  def get(mode):
    if mode not in runs:
      workdir = f"{tmp}/pod_{mode}"
      proc = local_sh(workdir, config(tmp, clips, mode))
      out, _ = proc.communicate(timeout=600)
      assert proc.returncode == 0, out[-4000:]
      lines = out.splitlines()
      assert any(l.startswith("[0] ") for l in lines) and any(l.startswith("[1] ") for l in lines)
      # Only process 0 prints the summary; both trained every step.
      assert sum('"accuracy"' in l for l in lines) == 1
      assert any(l.startswith("[1] ") and f"step {STEPS}/{STEPS}" in l for l in lines)
      runs[mode] = workdir
    return runs[mode]
  return get


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_two_processes_equal_one_process_on_two_devices(pod_runs, dataset, mode):
  tmp, clips = dataset
  single = f"{tmp}/single_{mode}"
  run = one_process(single, config(tmp, clips, mode))
  try:
    pod = pod_runs(mode)
    _, err = run.communicate(timeout=600)
  finally:
    run.kill()
  assert run.returncode == 0, err[-3000:]
  assert bitwise_equal(saved_state(pod, STEPS), saved_state(single, STEPS))
  pod_test, pod_eval = report(pod)
  single_test, single_eval = report(single)
  # Counts and decisions equal, continuous scores to rounding, and training moved the
  # embeddings: not two runs that both learned nothing.
  assert_same_report(pod_test, single_test)
  assert_same_report(pod_eval, single_eval)
  assert set(pod_eval) >= {"classification", "retrieval"} | ({"robustness"} if mode == "jit"
                                                              else set())
  start, tuned = pod_eval["retrieval"].values()
  assert start != tuned


def test_killed_pod_resumes_bitwise(pod_runs, dataset):
  """pmap here; jit's resume is test_train_loop's (1 process) and the same checkpoint code."""
  mode = "pmap"
  pod = pod_runs(mode)
  tmp, clips = dataset
  killed = f"{tmp}/killed_{mode}"
  # Killed at an event: both processes pause once checkpoint 12 is on disk, before step 13
  # (the sitecustomize of tests/pausing).
  paused = f"{tmp}/paused_{mode}"
  os.makedirs(paused)
  proc = local_sh(killed, config(tmp, clips, mode), pausing_env(12, paused, env()))
  while len(os.listdir(paused)) < 2 and proc.poll() is None:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)    # the script and both processes at once
  out, _ = proc.communicate()
  assert len(os.listdir(paused)) == 2, out[-4000:]
  kept = sorted(int(d) for d in os.listdir(f"{killed}/checkpoints") if d.isdigit())
  assert 12 in kept and STEPS not in kept
  again = local_sh(killed, config(tmp, clips, mode))
  out, _ = again.communicate(timeout=600)
  assert again.returncode == 0, out[-4000:]
  assert "[0] " in out and "resumed from step 12" in out
  assert bitwise_equal(saved_state(pod, STEPS), saved_state(killed, STEPS))
  assert report(killed) == report(pod)


def test_a_dead_process_stops_the_other(dataset, tmp_path):
  """Process 1 is SIGKILLed once the job has written a checkpoint (an event); process 0,
  waiting at its next collective, must stop on the coordination service's heartbeat
  (hosts.HEARTBEAT_TIMEOUT_S = 15 s) and say why. The only clock is a 600 s bound that ends a
  hang: no load on a 2-core machine stretches a 15 s heartbeat to that."""
  tmp, clips = dataset
  workdir = f"{tmp}/dead"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  logs = [open(tmp_path / f"process{i}.err", "w+") for i in range(2)]   # never a full pipe
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxaudio.main", f"--workdir={workdir}",
       f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       *config(tmp, clips, "jit", steps=400)], cwd=ROOT, env=env(),
      stdout=subprocess.DEVNULL, stderr=logs[i], text=True) for i in range(2)]
  try:
    while not os.path.isdir(f"{workdir}/checkpoints/6") and all(p.poll() is None for p in procs):
      time.sleep(0.05)
    assert os.path.isdir(f"{workdir}/checkpoints/6"), (tmp_path / "process0.err").read_text()
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    killed_at = time.time()
    try:
      procs[0].wait(timeout=600)
    except subprocess.TimeoutExpired:
      pytest.fail("process 0 still runs 600 s after its peer died")
    print(f"process 0 stopped {time.time() - killed_at:.1f} s after its peer died")
  finally:
    for p in procs:
      p.kill()
      p.wait()
    for f in logs:
      f.close()
  err = (tmp_path / "process0.err").read_text()
  assert procs[0].returncode != 0
  assert "another task died" in err or "heartbeat" in err, err[-2000:]


def test_the_heartbeat_that_stops_a_pod_is_the_short_one(monkeypatch):
  """What makes the dead-peer test above quick without a clock in it: the job joins with
  hosts.HEARTBEAT_TIMEOUT_S (JAX's own default waits 100 s), on gloo collectives."""
  import jax
  from jaxaudio.runtime import hosts
  joined, updates = [], []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: joined.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda k, v: updates.append((k, v)))
  hosts.initialize("127.0.0.1:1234", 2, 1)
  assert joined == [{"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                     "process_id": 1, "heartbeat_timeout_seconds": 15}]
  assert hosts.HEARTBEAT_TIMEOUT_S == 15 and updates == [("jax_cpu_collectives_implementation",
                                                          "gloo")]


def test_evaluate_command_on_two_processes(pod_runs):
  """python -m jaxaudio.evaluate joins the job like main: the same evaluation the run wrote
  at its end, printed once."""
  pod = pod_runs("jit")
  _, before = report(pod)
  proc = subprocess.run(["bash", "launch/local.sh", "2", pod, "--retrieval", "--robustness",
                         "--bootstrap=50"], cwd=ROOT, env=dict(env(), MODULE="jaxaudio.evaluate"),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_same_report(report(pod)[1], before)
  lines = proc.stdout.splitlines()
  assert [l[:5] for l in lines if "{" in l] == ["[0] {"]    # the summary, from process 0 only
  assert sum(l.startswith("[0] report: ") for l in lines) == 1 and "[1] report" not in proc.stdout
